"""Engine benchmark at the published vox-256 widths (random weights) on 256x256 frames, for FOMM
and for TPSMM (the widths of the published TPSMM vox-256: 10 thin-plate splines).

Each measurement runs in its own process so its peak memory is its own. Prints a Markdown table:
seconds per frame, frames per second, GFLOP per frame, achieved GFLOP/s against this machine's
measured matmul peak, and peak memory (resident on CPU, allocated on a GPU); then the whole
`animate render` process on a clip against the plain per-frame float32 loop (the published
demo's way). On a GPU the batch-1 row is the single-stream latency, and the engine rows include
the driving frames' trip from host memory (uint8, pinned), as in a job.

    .venv/bin/python bench/engine.py [--device cpu|cuda] [--frames 16] [--quick]
        [--families fomm,tpsmm] [--runtimes torch,openvino] [--precisions fp32,bf16] [--clip-frames 60]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = ROOT / "out" / "bench-model-cache"  # the openvino runtime's converted vox-256 graphs
VOX_256 = {
    "common_params": {"num_kp": 10, "num_channels": 3, "estimate_jacobian": True},
    "kp_detector_params": {
        "temperature": 0.1,
        "block_expansion": 32,
        "max_features": 1024,
        "scale_factor": 0.25,
        "num_blocks": 5,
    },
    "generator_params": {
        "block_expansion": 64,
        "max_features": 512,
        "num_down_blocks": 2,
        "num_bottleneck_blocks": 6,
        "estimate_occlusion_map": True,
        "dense_motion_params": {
            "block_expansion": 64,
            "max_features": 1024,
            "num_blocks": 5,
            "scale_factor": 0.25,
        },
    },
}


# The published TPSMM vox-256 model_params (../shared/tpsmm/tpsmm-official-manifests.json).
TPSMM_VOX_256 = {
    "common_params": {"num_tps": 10, "num_channels": 3, "bg": True, "multi_mask": True},
    "generator_params": {"block_expansion": 64, "max_features": 512, "num_down_blocks": 3},
    "dense_motion_params": {
        "block_expansion": 64,
        "max_features": 1024,
        "num_blocks": 5,
        "scale_factor": 0.25,
    },
    "avd_network_params": {"id_bottle_size": 128, "pose_bottle_size": 128},
}


def peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so the clock measures it."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def precisions_for(device: str, quick: bool) -> tuple[str, ...]:
    if quick:
        return ("fp32",)
    return ("fp32", "bf16", "fp16") if device == "cuda" else ("fp32", "bf16")


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def vox_model(family: str = "fomm"):
    """Published vox-256 widths, random weights, non-trivial batch-norm statistics as in a trained model."""
    import torch

    from worker.models import build_model, tpsmm

    torch.manual_seed(0)
    if family == "tpsmm":
        model = tpsmm.build_model(TPSMM_VOX_256, (256, 256)).eval()
    else:
        model = build_model(VOX_256, (256, 256)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def published_frame(model, source, kp_source, kp_initial, driving_frame):
    """One frame as the published demo computes it (relative motion), everything recomputed."""
    from worker.models import normalize_kp
    from worker.models.tpsmm import relative_kp

    kp = model.kp_detector(driving_frame)
    if model.family == "tpsmm":
        kp_norm = relative_kp(kp_source, kp, kp_initial)
        motion = model.dense_motion_network(source_image=source, kp_driving=kp_norm, kp_source=kp_source)
        return model.inpainting_network(source, motion)["prediction"]
    kp_norm = normalize_kp(kp_source, kp, kp_initial, True, True, True)
    return model.generator(source, kp_source=kp_source, kp_driving=kp_norm)["prediction"]


def measure_matmul_peak(device: str, precisions: tuple[str, ...]) -> dict:
    import torch

    out = {}
    n, reps = (8192, 20) if device == "cuda" else (2048, 5)
    for name in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        out[name] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
    return out


def gflop_per_frame(family: str) -> float:
    """Our path's work per frame (the Renderer's step for one frame, source work excluded)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from worker.pipeline import Renderer

    renderer = Renderer(vox_model(family))
    state = renderer.prepare_source(torch.rand(1, 3, 256, 256))
    frame = torch.rand(1, 3, 256, 256)
    renderer.animate_batch(state, frame)  # sets the initial frame
    with FlopCounterMode(display=False) as counter:
        renderer.animate_batch(state, frame)
    return counter.get_total_flops() / 1e9


def run_plain_loop(family: str, frames: int, device: str) -> dict:
    """The published demo's loop: one frame at a time, float32, the whole model every frame."""
    import torch

    torch.manual_seed(1)
    model = vox_model(family).to(device)
    source = torch.rand(1, 3, 256, 256, device=device)
    driving = torch.rand(frames + 1, 3, 256, 256, device=device)
    with torch.no_grad():
        kp_source = model.kp_detector(source)
        kp_initial = model.kp_detector(driving[:1])
        published_frame(model, source, kp_source, kp_initial, driving[:1])  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for t in range(1, frames + 1):
            published_frame(model, source, kp_source, kp_initial, driving[t : t + 1]).cpu()
        seconds = time.perf_counter() - start
    return {"seconds_per_frame": seconds / frames, "peak_mb": peak_mb(device)}


def run_engine(
    family: str, frames: int, batch: int, precision: str, device: str, runtime: str = "torch"
) -> dict:
    """Our path: source encoded once, frames in batches, the Renderer's inference step.

    Each batch starts as host uint8 frames and ends as host uint8 frames, as in a job. The openvino
    runtime converts the model once into MODEL_CACHE (seconds to minutes), which is not timed.
    """
    import numpy as np
    import torch

    from worker.pipeline import Renderer, to_frames, to_tensor

    torch.manual_seed(1)
    started = time.perf_counter()
    renderer = Renderer(vox_model(family).to(device), device, runtime=runtime, cache_dir=MODEL_CACHE)
    load_seconds = time.perf_counter() - started
    source = torch.rand(1, 3, 256, 256)
    state = renderer.prepare_source(source, precision=precision)
    batches = max(1, frames // batch)
    driving = np.random.default_rng(1).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    with torch.inference_mode():
        for _ in range(3 if device == "cuda" else 1):  # warm-up (and the initial frame)
            to_frames(renderer.animate_batch(state, to_tensor(driving, device)))
        synchronize(device)
        start = time.perf_counter()
        for _ in range(batches):
            to_frames(renderer.animate_batch(state, to_tensor(driving, device)))
        seconds = time.perf_counter() - start
    result = {
        "seconds_per_frame": seconds / (batches * batch),
        "peak_mb": peak_mb(device),
        "load_s": load_seconds,
    }
    if runtime == "openvino":
        from worker.export.openvino_ir import cpu_has_bf16

        result.update(cache_hit=renderer.adapter.graphs.cache_hit, native_bf16=cpu_has_bf16())
    return result


def runtime_rows(family: str, runtimes: list[str], notes: list[str]) -> list[str]:
    """The runtimes `family` can run on: OpenVINO needs export graphs, which TPSMM does not have yet."""
    if family == "tpsmm" and "openvino" in runtimes:
        notes.append("openvino: no tpsmm rows (TPSMM has no export graphs yet)")
        return [runtime for runtime in runtimes if runtime != "openvino"]
    return runtimes


def child(args: list[str], device: str) -> dict:
    cmd = [sys.executable, __file__, "--device", device, "--child", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_clip(path: Path, frames: int) -> None:
    import imageio_ffmpeg
    import numpy as np

    writer = imageio_ffmpeg.write_frames(str(path), (256, 256), fps=25, macro_block_size=1)
    writer.send(None)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for t in range(frames):
        writer.send(np.roll(base, t, axis=1).copy())
    writer.close()


def whole_process(family: str, precision: str, workdir: Path, device: str, runtime: str = "torch") -> float:
    checkpoint, clip, image = workdir / f"{family}.pth.tar", workdir / "clip.mp4", workdir / "source.png"
    out = workdir / f"out-{family}-{runtime}-{precision}.mp4"
    cmd = [
        sys.executable, "-m", "worker.cli", "render", "--source", str(image), "--driving", str(clip),
        "--checkpoint", str(checkpoint), "--out", str(out),
        "--precision", precision, "--crop", "none", "--device", device,
        "--runtime", runtime, "--cache-dir", str(MODEL_CACHE),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--child", nargs="+")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 and 4, fp32 only (also its peak)")
    parser.add_argument("--families", default="fomm,tpsmm", help="comma-separated: fomm, tpsmm")
    parser.add_argument(
        "--runtimes",
        default="torch",
        help="comma-separated: torch, openvino (CPU, FOMM only, the openvino extra)",
    )
    parser.add_argument("--precisions", help="comma-separated (default: fp32 and bf16; fp32 with --quick)")
    parser.add_argument("--clip-frames", type=int, default=60, help="frames of the whole-process clip")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    device = args.device
    if args.child:
        kind, family, *rest = args.child
        if kind == "plain":
            result = run_plain_loop(family, int(rest[0]), device)
        elif kind == "engine":
            result = run_engine(family, int(rest[0]), int(rest[1]), rest[2], device, rest[3])
        elif kind == "gflop":
            result = {"gflop": gflop_per_frame(family)}
        elif kind == "peak":
            result = {"peak": measure_matmul_peak(device, tuple(rest)), "device": device_name(device)}
        print(json.dumps(result))
        return

    families = args.families.split(",")
    if not set(families) <= {"fomm", "tpsmm"}:
        sys.exit("bench: --families takes fomm and/or tpsmm")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("bench: --device cuda: no CUDA device is available")
    runtimes = args.runtimes.split(",")
    if "openvino" in runtimes and device != "cpu":
        sys.exit("bench: the openvino runtime runs on the CPU only")
    precisions = args.precisions.split(",") if args.precisions else precisions_for(device, args.quick)
    machine = child(["peak", "-", *dict.fromkeys(["fp32", *precisions])], device)
    peak = machine["peak"]
    gflop = {family: child(["gflop", family], device)["gflop"] for family in families}
    print(f"# Engine benchmark, {time.strftime('%Y-%m-%d')}, {device}: {machine['device']}")
    gflops = ", ".join(f"{family} {gflop[family]:.1f}" for family in families)
    peaks = ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in peak.items())
    print(f"matmul peak: {peaks}; GFLOP per frame (our path): {gflops}\n")
    print(
        "| model | path | runtime | batch | precision | s/frame | frames/s | GFLOP/s | % of peak | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    batches = (1, 4) if args.quick else (1, 4, 16, 64) if device == "cuda" else (1, 4, 16)
    plain = {}
    notes = []
    for family in families:
        plain[family] = child(["plain", family, str(args.frames)], device)
        spf, mb = plain[family]["seconds_per_frame"], plain[family]["peak_mb"]
        print(
            f"| {family} | plain per-frame loop | torch | 1 | fp32 | {spf:.3f} | {1 / spf:.2f} | - | - "
            f"| {mb:.0f} |"
        )
        for runtime in runtime_rows(family, runtimes, notes):
            for precision in precisions:
                for batch in batches:
                    frames = str(max(args.frames, batch))
                    r = child(["engine", family, frames, str(batch), precision, runtime], device)
                    spf = r["seconds_per_frame"]
                    achieved = gflop[family] / spf
                    ran = "fp32" if not r.get("native_bf16", True) else precision  # OpenVINO's fallback
                    print(
                        f"| {family} | engine | {runtime} | {batch} | {precision} | {spf:.3f} | "
                        f"{1 / spf:.2f} | {achieved:.0f} | {100 * achieved / peak[ran]:.0f}% | "
                        f"{r['peak_mb']:.0f} |"
                    )
                    if runtime == "openvino" and not r["cache_hit"]:
                        notes.append(
                            f"openvino: converted the {family} model in {r['load_s']:.0f} s "
                            f"(cached in {MODEL_CACHE})"
                        )
                    if runtime == "openvino" and precision == "bf16" and not r["native_bf16"]:
                        notes.append(
                            "openvino bf16: this CPU has no native bfloat16, so OpenVINO ran float32"
                        )
    baselines = ", ".join(f"{family} {plain[family]['seconds_per_frame']:.3f}" for family in families)
    print(f"\nin-run baseline, plain loop s/frame: {baselines}")
    for note in dict.fromkeys(notes):
        print(note)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        import numpy as np
        from PIL import Image

        from worker.models import save_checkpoint

        for family in families:
            save_checkpoint(workdir / f"{family}.pth.tar", vox_model(family))
        make_clip(workdir / "clip.mp4", args.clip_frames)
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
            workdir / "source.png"
        )
        n = args.clip_frames
        print(f"\n| whole `animate render` process, {n} frames 256x256 | seconds | vs plain loop x {n} |")
        print("|---|---|---|")
        for family in families:
            for runtime in runtime_rows(family, runtimes, []):
                for precision in precisions:
                    seconds = whole_process(family, precision, workdir, device, runtime)
                    ratio = plain[family]["seconds_per_frame"] * n / seconds
                    print(
                        f"| {family} --runtime {runtime} --precision {precision} "
                        f"| {seconds:.1f} | {ratio:.2f}x |"
                    )


if __name__ == "__main__":
    main()
