"""The `animate` command: render locally, inspect and export a checkpoint, train and evaluate models.

Errors about inputs print one line on stderr and exit with status 2; no output file is left behind,
and no input is ever written over: an output that is an input (by name, symbolic or hard link) is
refused, and so is an export into a symbolic link.
"""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from contract.capabilities import PRECISIONS, RUNTIME_CHOICES
from contract.option_flags import add_motion_arguments, motion_values
from contract.options import OutputFormatName
from service.client import add_submit_arguments, submit

EXIT_BAD_INPUT = 2
OUTPUT_FORMATS = get_args(OutputFormatName)


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"animate: error: {self.prog}: {message}\n")


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "animate" / "models"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="animate", description="Animate a still image by a video.")
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="animate an image by a driving video (MP4, WebM, GIF, WebP)")
    render.add_argument("--source", required=True, help="source image (PNG, JPEG, WebP)")
    render.add_argument("--driving", required=True, help="driving video")
    render.add_argument("--checkpoint", required=True, help="model checkpoint (.pth.tar / .pth)")
    render.add_argument("--out", required=True, help="output video")
    render.add_argument("--config", help="YAML in the published config format overriding the inferred one")
    add_motion_arguments(render)
    render.add_argument("--driving-start", type=_start_frame, default=0, metavar="N|best")
    render.add_argument("--batch-size", type=int, default=4)
    render.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    render.add_argument("--precision", choices=PRECISIONS, default=None)
    render.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        default=os.environ.get("RUNTIME", "auto"),
        help="openvino: CPU only, needs the openvino extra; models are converted once and cached; "
        "auto: the faster here for the model, precision and batch size, measured once and cached "
        "(default: $RUNTIME, else auto)",
    )
    render.add_argument(
        "--cache-dir", type=Path, default=None, help="converted models (default: ~/.cache/animate/models)"
    )
    render.add_argument("--size", type=int, help="output side in pixels (default: the model's)")
    render.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True)
    render.add_argument(
        "--crop",
        default="auto",
        metavar="auto|face|body|none|X,Y,W,H",
        help="frame the subject like the training data (default: auto; see engine/subject/framing.py)",
    )
    render.add_argument(
        "--paste-back",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="composite the animated crop back into the full source image (default: off)",
    )
    render.add_argument(
        "--format",
        choices=list(OUTPUT_FORMATS),
        help="mp4, webm, gif or webp (default: --out's extension if it is one of them, else mp4)",
    )
    render.add_argument(
        "--loop",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="play forward then backward, seamless on repeat; no audio (default: off)",
    )
    render.add_argument(
        "--poster", metavar="JPG", help="also write this JPEG of one frame (see --poster-frame)"
    )
    render.add_argument(
        "--poster-frame", type=int, default=0, metavar="N", help="the poster's frame (default: 0)"
    )

    crop = commands.add_parser("crop", help="crop a video to a square that follows its subject")
    crop.add_argument("--in", dest="input", required=True, help="input video")
    crop.add_argument("--out", required=True, help="output MP4, square")
    crop.add_argument("--boxes", help="also write the boxes as JSON: one [x, y, w, h] per input frame")
    crop.add_argument("--kind", choices=["auto", "face", "body"], default="auto", help="framing")
    crop.add_argument("--size", type=int, default=512, help="output side in pixels (default: 512)")
    crop.add_argument("--audio", action=argparse.BooleanOptionalAction, default=True)

    inspect = commands.add_parser(
        "inspect", help="print a checkpoint's family, inferred architecture, modes and parameter counts"
    )
    inspect.add_argument("checkpoint")
    inspect.add_argument("--config")
    inspect.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        help="also say which runtime renders it here (auto: measured once, then read from the cache)",
    )
    inspect.add_argument("--precision", choices=PRECISIONS, default=None)
    inspect.add_argument("--batch-size", type=int, default=4)
    inspect.add_argument("--cache-dir", type=Path, default=None)

    export = commands.add_parser(
        "export", help="write a model as ONNX or OpenVINO graphs that run without torch"
    )
    export.add_argument("--format", required=True, metavar="onnx|openvino")
    export.add_argument("--checkpoint", required=True, help="model checkpoint (.pth.tar / .pth)")
    export.add_argument("--out", required=True, type=Path, help="a new (or empty) folder for the files")
    export.add_argument(
        "--batch", type=int, help="fix the batch size of the per-frame graphs (default: dynamic)"
    )
    export.add_argument("--precision", default="fp32", metavar="fp32|bf16", help="bf16: OpenVINO only")
    export.add_argument("--config", help="YAML in the published config format overriding the inferred one")

    quantize = commands.add_parser(
        "quantize",
        help="make int8 graphs of a model for --precision int8 (OpenVINO, NNCF), kept only if they pay",
    )
    quantize.add_argument("--checkpoint", required=True, help="model checkpoint (.pth.tar / .pth)")
    quantize.add_argument("--config", help="YAML in the published config format overriding the inferred one")
    quantize.add_argument("--calibration", nargs="+", required=True, help="clips to calibrate on")
    quantize.add_argument("--held-out", nargs="+", required=True, help="other clips, to check int8 on")
    quantize.add_argument("--frames", type=int, default=8, help="frames taken from each clip (default: 8)")
    quantize.add_argument("--batch-size", type=int, default=4, help="the batch int8 must be faster at")
    quantize.add_argument("--cache-dir", type=Path, default=None, help="the model cache (default as render)")

    add_submit_arguments(commands.add_parser("submit", help="animate through a running service, over HTTP"))

    train = commands.add_parser("train", help="train a model on a folder of videos (self-supervised)")
    train.add_argument("--config", required=True, help="training YAML (dataset_params, model_params, ...)")
    train.add_argument("--data", required=True, help="folder of videos and/or folders of frames")
    train.add_argument("--out", required=True, help="run folder: log, pictures, checkpoints, model")
    train.add_argument("--vgg19", help="torchvision VGG-19 weights for the perceptual loss (else L1)")
    train.add_argument("--resume", help="continue from a checkpoint of an earlier run")
    train.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    train.add_argument("--steps", type=int, help="stop after this many steps (default: the config's epochs)")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")

    evaluate = commands.add_parser("eval", help="reconstruction L1 against the copy-the-source baseline")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data", required=True, help="folder of held-out videos and/or frame folders")
    evaluate.add_argument("--config")
    evaluate.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _fail(message: str) -> int:
    print(f"animate: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one file, through symbolic and hard links alike."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (or cannot be read): not the same existing file
        return False


def _overwritten_input(inputs: dict[str, str | None], outputs: dict[str, Path]) -> str | None:
    """Which output names an input, said as a refusal; None when none does."""
    inputs = {flag: given for flag, given in inputs.items() if given}
    for out_flag, out in outputs.items():
        for in_flag, given in inputs.items():
            if _same_file(out, Path(given)):
                return f"{out_flag} {out} is the {in_flag} file: it would be written over"
    return None


def _output_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the output arguments, checked before anything heavy is loaded."""
    out = Path(args.out)
    if not out.parent.is_dir():
        return f"output folder does not exist: {out.parent}"
    if args.poster and not Path(args.poster).parent.is_dir():
        return f"poster folder does not exist: {Path(args.poster).parent}"
    if args.poster and Path(args.poster).resolve() == out.resolve():
        return "--poster and --out name the same file"
    inputs = {"--source": args.source, "--driving": args.driving, "--checkpoint": args.checkpoint}
    outputs = {"--out": out, **({"--poster": Path(args.poster)} if args.poster else {})}
    if (overwritten := _overwritten_input({**inputs, "--config": args.config}, outputs)) is not None:
        return overwritten
    if args.poster_frame < 0:
        return "--poster-frame must be a frame index >= 0"
    extension = out.suffix.lower().lstrip(".")
    if args.format and extension in OUTPUT_FORMATS and extension != args.format:
        return f"--out {out.name} does not match --format {args.format}"
    return None


def _render(args: argparse.Namespace) -> int:
    problem = _output_problem(args)
    if problem is not None:
        return _fail(problem)

    from concurrent.futures import ThreadPoolExecutor

    from engine.errors import RenderError
    from engine.media.video_io import load_image, probe_video

    # The inputs are read and probed (ffmpeg processes) while torch loads and the model is prepared.
    with ThreadPoolExecutor(max_workers=1) as pool:
        inputs = pool.submit(lambda: (load_image(args.source), probe_video(args.driving)))
        try:
            return _render_loaded(args, inputs.result)
        except RenderError as exc:
            return _fail(str(exc))


def _render_loaded(args: argparse.Namespace, inputs: Callable[[], tuple]) -> int:
    import torch
    from pydantic import ValidationError

    from contract.options import first_error
    from engine import CheckpointError, load_checkpoint
    from engine.animator import Animator
    from engine.errors import RenderError
    from engine.export import ExportError
    from engine.export.openvino_ir import OpenVinoMissing
    from engine.hardware import default_precision, native_bf16
    from engine.pipeline import RenderOptions, VideoPipeline
    from engine.progress import ProgressBar

    if args.device == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda: no CUDA device is available")
    out = Path(args.out)
    poster = Path(args.poster) if args.poster else None
    extension = out.suffix.lower().lstrip(".")
    output_format = args.format or (extension if extension in OUTPUT_FORMATS else "mp4")
    precision = args.precision or default_precision(args.device)
    if args.device == "cpu" and precision == "bf16" and not native_bf16():
        print(
            "animate: warning: this CPU has no native bf16 (AVX-512 BF16 or AMX): fp32 is faster",
            file=sys.stderr,
        )
    try:
        options = RenderOptions(
            **motion_values(args),
            driving_start=args.driving_start,
            size=args.size,
            batch_size=args.batch_size,
            audio=args.audio,
            device=args.device,
            precision=precision,
            crop=args.crop,
            paste_back=args.paste_back,
            format=output_format,
            loop=args.loop,
            poster=poster is not None,
            poster_frame=args.poster_frame,
        )
    except ValidationError as exc:
        return _fail(first_error(exc)[1])
    if args.runtime == "openvino" and args.device != "cpu":
        return _fail("--runtime openvino runs on the CPU only")
    if args.runtime == "openvino" and precision not in ("fp32", "bf16", "int8"):
        return _fail("--runtime openvino runs fp32, bf16 or int8")
    if precision == "int8" and (args.runtime == "torch" or args.device != "cpu"):
        return _fail("--precision int8 runs on the CPU with --runtime openvino or auto")
    bar = ProgressBar()
    converting = ProgressBar(unit="graphs")
    try:
        try:
            model = load_checkpoint(args.checkpoint, config=args.config, device=args.device)
        except CheckpointError:
            inputs()  # a bad input is reported first, as when the inputs were read before the model
            raise
        animator = Animator(
            model,
            args.device,
            runtime=args.runtime,
            cache_dir=args.cache_dir or _default_cache_dir(),
            on_converted=lambda done, total: converting.count("converting", done, total),
            name=Path(args.checkpoint).name,
            precision=precision,
            batch_size=args.batch_size,
        )
        converting.close()
        image, info = inputs()
        pipeline = VideoPipeline(animator)
        result = pipeline.render(image, args.driving, out, options, bar, info=info, poster_path=poster)
    except (RenderError, CheckpointError, ExportError, OpenVinoMissing) as exc:
        converting.close()
        bar.close()
        return _fail(str(exc))
    bar.close()
    t = result.timings
    looping = ", loop" if result.loop else ""
    audio = "on" if result.audio else "off"
    framing = result.framing
    if framing.warning:
        print(
            f"animate: warning: {framing.warning}; --crop X,Y,W,H animates the part you choose",
            file=sys.stderr,
        )
    print(
        f"wrote {out} ({result.format}, {result.mime_type}, {result.bytes:,} bytes, {result.frames} frames"
        f"{looping}, {result.width}x{result.height}, {result.fps:g} fps, audio {audio}) in {t['total']:.1f}s;"
        f" framing {framing.source}: {framing.reason}",
        file=sys.stderr,
    )
    if poster is not None:
        print(f"wrote {poster} (frame {options.poster_frame})", file=sys.stderr)
    return 0


def _crop(args: argparse.Namespace) -> int:
    from engine.errors import RenderError
    from engine.progress import ProgressBar
    from engine.subject.cropvideo import crop_video

    out = Path(args.out)
    for path in (out, Path(args.boxes)) if args.boxes else (out,):
        if not path.parent.is_dir():
            return _fail(f"output folder does not exist: {path.parent}")
    outputs = {"--out": out, **({"--boxes": Path(args.boxes)} if args.boxes else {})}
    if (overwritten := _overwritten_input({"--in": args.input}, outputs)) is not None:
        return _fail(overwritten)
    if not (16 <= args.size <= 2048 and args.size % 2 == 0):
        return _fail("--size must be an even number of pixels from 16 to 2048")
    bar = ProgressBar()
    try:
        plan = crop_video(args.input, out, args.boxes, args.kind, args.size, args.audio, bar)
    except RenderError as exc:
        bar.close()
        return _fail(str(exc))
    bar.close()
    framing = f"{plan.kind} framing" if plan.kind != "none" else "no subject found: centre squares"
    print(f"wrote {out} ({len(plan.boxes)} frames, {args.size}x{args.size}, {framing})", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from engine import CheckpointError, load_checkpoint
    from engine.export.files import ExportError, check_request, export_graphs, file_digest
    from engine.export.openvino_ir import OpenVinoMissing
    from engine.families import family_of
    from engine.progress import ProgressBar

    if args.out.is_symlink():
        return _fail(f"--out {args.out} is a symbolic link: an export is written into a folder of its own")
    bar = ProgressBar(unit="graphs")
    try:
        check_request(args.format, args.batch, args.precision, args.out)
        model = load_checkpoint(args.checkpoint, config=args.config)
        family = family_of(model)
        checkpoint = {"file": Path(args.checkpoint).name, "sha256": file_digest(Path(args.checkpoint))}
        info = export_graphs(
            family.graphs(family.prepare(model, "cpu")),
            args.out,
            args.format,
            args.batch,
            args.precision,
            checkpoint,
            lambda done, total: bar.count("converting", done, total),
        )
    except (ExportError, CheckpointError, OpenVinoMissing) as exc:
        bar.close()
        return _fail(str(exc))
    bar.close()
    files = ", ".join(graph["file"] for graph in info["graphs"].values())
    print(
        f"wrote {args.out}: {files} and manifest.json ({info['family']}, batch {info['batch']})",
        file=sys.stderr,
    )
    return 0


def _quantize(args: argparse.Namespace) -> int:
    """Exit 0 with the int8 graphs kept, 1 when they were measured and not kept, 2 for bad input."""
    import dataclasses
    import json

    from engine import CheckpointError, load_checkpoint
    from engine.animator import Animator
    from engine.errors import RenderError
    from engine.export import ExportError
    from engine.export.openvino_ir import OpenVinoMissing
    from engine.export.quantize import QuantizeError, clip_jobs, quantize

    if not (1 <= args.frames <= 64 and 1 <= args.batch_size <= 64):
        return _fail("--frames and --batch-size must be from 1 to 64")
    try:
        model = load_checkpoint(args.checkpoint, config=args.config)
        h, w = model.frame_shape
        calibration = clip_jobs(args.calibration, (h, w), args.frames)
        held_out = clip_jobs(args.held_out, (h, w), args.frames)
        animator = Animator(model, "cpu", "openvino", args.cache_dir or _default_cache_dir())
        timing = held_out[0][1][: args.batch_size].contiguous()
        report = quantize(animator.adapter, calibration, held_out, timing)
    except (CheckpointError, RenderError, ExportError, OpenVinoMissing, QuantizeError) as exc:
        return _fail(str(exc))
    print(json.dumps(dataclasses.asdict(report), indent=2))
    if not report.kept:
        print(f"animate: int8 not kept: {report.reason}", file=sys.stderr)
        return 1
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from engine import CheckpointError, load_checkpoint
    from engine.errors import RenderError
    from engine.export import ExportError
    from engine.export.openvino_ir import OpenVinoMissing
    from engine.families import family_of

    try:
        model = load_checkpoint(args.checkpoint, config=args.config)
    except CheckpointError as exc:
        return _fail(str(exc))
    report = family_of(model).report(model)
    if args.runtime is not None:
        try:
            report["runtime"] = _runtime_report(args, model)
        except (RenderError, ExportError, OpenVinoMissing) as exc:
            return _fail(str(exc))
    print(json.dumps(report, indent=2))
    return 0


def _runtime_report(args: argparse.Namespace, model) -> dict:
    """Which runtime renders the model here at the asked precision and batch size, and why."""
    from engine.animator import Animator
    from engine.hardware import default_precision

    precision = args.precision or default_precision("cpu")
    animator = Animator(
        model, "cpu", args.runtime, args.cache_dir or _default_cache_dir(), precision=precision,
        batch_size=args.batch_size,
    )  # fmt: skip
    choice = animator.runtime_choice
    return {
        "runtime": choice.runtime,
        "precision": precision,
        "batch_size": args.batch_size,
        "why": choice.reason,
        "seconds_per_frame": {name: round(s, 4) for name, s in choice.seconds_per_frame.items()},
    }


def _train(args: argparse.Namespace) -> int:
    import torch

    from engine.train.dataset import DataError
    from engine.train.trainer import Trainer, TrainingError, read_training_config
    from engine.train.vgg19 import Vgg19Error

    if args.device == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda: no CUDA device is available")
    if args.steps is not None and args.steps < 1:
        return _fail("--steps must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            return _fail("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    try:
        trainer = Trainer(read_training_config(args.config), args.data, args.out, args.vgg19, args.device)
        if args.resume:
            trainer.resume(args.resume)
        result = trainer.train(args.steps)
    except (TrainingError, DataError, Vgg19Error) as exc:
        return _fail(str(exc))
    summary = " ".join(f"{k}={v:.4f}" for k, v in result["losses"].items())
    print(f"trained to step {result['steps']} in {result['seconds']:.0f}s: {summary}", file=sys.stderr)
    print(f"model: {Path(args.out) / 'model.pth.tar'}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from engine import CheckpointError, load_checkpoint
    from engine.families import family_of
    from engine.train.dataset import DataError
    from engine.train.evaluate import evaluate

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return _fail("--device cuda: no CUDA device is available")
    try:
        model = load_checkpoint(args.checkpoint, config=args.config, device=args.device)
        family = family_of(model)
        reconstruct = family.reconstructor(model, args.device)
        if reconstruct is None:
            return _fail(f"eval cannot measure {family.title} checkpoints yet ({args.checkpoint})")
        report = evaluate(reconstruct, args.data, model.frame_shape)
    except (CheckpointError, DataError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{'video':<24} {'frames':>6} {'model L1':>9} {'copy L1':>9}")
    for v in report.videos:
        print(f"{v.name:<24} {v.frames:>6} {v.model_l1:>9.5f} {v.baseline_l1:>9.5f}")
    print(f"{'overall':<24} {report.frames:>6} {report.model_l1:>9.5f} {report.baseline_l1:>9.5f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "render": _render,
        "crop": _crop,
        "inspect": _inspect,
        "train": _train,
        "eval": _evaluate,
        "submit": submit,
        "export": _export,
        "quantize": _quantize,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
