"""The `animate` command: render locally, inspect a checkpoint.

Errors about inputs print one line on stderr and exit with status 2; no output file is left behind.
"""

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _start_frame(value: str) -> int | str:
    if value == "best":
        return value
    try:
        index = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a frame index or 'best'") from None
    if index < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return index


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animate", description="Animate a still image by a video.")
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="animate an image by a driving video into an MP4")
    render.add_argument("--source", required=True, help="source image (PNG, JPEG, WebP)")
    render.add_argument("--driving", required=True, help="driving video")
    render.add_argument("--checkpoint", required=True, help="model checkpoint (.pth.tar / .pth)")
    render.add_argument("--out", required=True, help="output MP4")
    render.add_argument("--config", help="YAML in the published config format overriding the inferred one")
    render.add_argument("--mode", choices=["relative", "absolute"], default="relative")
    render.add_argument("--adapt-scale", action=argparse.BooleanOptionalAction, default=True)
    render.add_argument("--driving-start", type=_start_frame, default=0, metavar="N|best")
    render.add_argument("--batch-size", type=int, default=4)
    render.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    render.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None)
    render.add_argument("--size", type=int, help="output side in pixels (default: the model's)")
    render.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True)

    inspect = commands.add_parser("inspect", help="print a checkpoint's inferred architecture")
    inspect.add_argument("checkpoint")
    inspect.add_argument("--config")
    return parser


def _fail(message: str) -> int:
    print(f"animate: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _render(args: argparse.Namespace) -> int:
    from worker.errors import RenderError
    from worker.models import CheckpointError, load_checkpoint
    from worker.pipeline import Renderer, RenderOptions
    from worker.progress import ProgressBar
    from worker.video_io import load_image, probe_video

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return _fail("--device cuda: no CUDA device is available")
    out = Path(args.out)
    if not out.parent.is_dir():
        return _fail(f"output folder does not exist: {out.parent}")
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    options = RenderOptions(
        mode=args.mode,
        adapt_scale=args.adapt_scale,
        driving_start=args.driving_start,
        size=args.size,
        batch_size=args.batch_size,
        audio=args.audio,
        device=args.device,
        precision=precision,
    )
    bar = ProgressBar("rendering")
    try:
        options.validate()
        image = load_image(args.source)
        info = probe_video(args.driving)
        model = load_checkpoint(args.checkpoint, config=args.config, device=args.device)
        result = Renderer(model, args.device).render(image, args.driving, out, options, bar, info=info)
    except (RenderError, CheckpointError) as exc:
        bar.close() if bar.last else None
        return _fail(str(exc))
    bar.close()
    t = result.timings
    print(
        f"wrote {out} ({result.frames} frames, {result.width}x{result.height}, "
        f"{result.fps:g} fps, audio {'on' if result.audio else 'off'}) in {t['total']:.1f}s",
        file=sys.stderr,
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from worker.models import CheckpointError, load_checkpoint

    try:
        model = load_checkpoint(args.checkpoint, config=args.config)
    except CheckpointError as exc:
        return _fail(str(exc))
    counts = {
        "kp_detector": sum(p.numel() for p in model.kp_detector.parameters()),
        "generator": sum(p.numel() for p in model.generator.parameters()),
    }
    report = {
        "frame_shape": list(model.frame_shape),
        "model_params": model.config,
        "parameters": counts,
    }
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"render": _render, "inspect": _inspect}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
