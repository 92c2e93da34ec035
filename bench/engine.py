"""Engine benchmark at the published vox-256 widths (random weights) on 256x256 frames, for FOMM
and for TPSMM (the widths of the published TPSMM vox-256: 10 thin-plate splines), and at the
published LivePortrait widths (human model: 256x256 network input, 512x512 frames in and out; its
published loop takes the 256x256 crops and decodes 512x512).

Each measurement runs in its own process so its peak memory is its own. Prints a Markdown table:
seconds per frame (wall and CPU), frames per second, GFLOP per frame (the published loop's and our
path's, counted through the fused convolutions), achieved GFLOP/s against this machine's measured
matmul peak, and peak memory (resident on CPU, allocated on a GPU); then the fixed cost of a run
(a worker's start: the model loaded onto each runtime; a whole `animate render` of a 1-frame clip:
start-up to the first frame written), `animate quantize`'s int8 report where int8 is asked, and the
whole `animate render` process on a clip (FOMM 60 frames, TPSMM 30), raced against the family's
published demo's way as a whole process (bench/reference_demo.py), interleaved in one run. CPU
seconds are reported next to wall seconds: on a shared machine they move much less with the load.
bf16 rows run only where the CPU has native bf16 (on others PyTorch falls back to a slow loop). On
a GPU the batch-1 row is the single-stream latency, and the engine rows include the driving
frames' trip from host memory (uint8, pinned), as in a job. On a CPU with the `openvino` extra
installed every table also has OpenVINO and auto rows (`--runtimes` picks; an auto row names
what it chose); conversions, quantization and auto's measurement are cached in
out/bench-model-cache, not timed (a worker's first start pays them once). int8 (`--precisions
...,int8`) runs `animate quantize` on the shared clips first; with random weights its flow check
fails, so the report gives its speed and why it was not kept.

    .venv/bin/python bench/engine.py [--device cpu|cuda] [--frames 16] [--repeat 1] [--quick]
        [--families fomm,tpsmm,liveportrait] [--runtimes torch,openvino,auto] [--precisions fp32,bf16,int8]
        [--clip-frames N] [--threads N] [--whole-process-only]
"""

import argparse
import json
import os
import resource
import statistics
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

# The published LivePortrait human model_params (src/config/models.yaml, and the code defaults it
# leaves out: ConvNeXt-V2 tiny's depths and widths, the decoder's 64 output channels).
LIVEPORTRAIT_PUBLISHED = {
    "appearance_feature_extractor_params": {
        "image_channel": 3, "block_expansion": 64, "num_down_blocks": 2, "max_features": 512,
        "reshape_channel": 32, "reshape_depth": 16, "num_resblocks": 6,
    },
    "motion_extractor_params": {
        "num_kp": 21, "backbone": "convnextv2_tiny", "depths": [3, 3, 9, 3], "dims": [96, 192, 384, 768],
    },
    "warping_module_params": {
        "num_kp": 21, "block_expansion": 64, "max_features": 512, "num_down_blocks": 2,
        "reshape_channel": 32, "estimate_occlusion_map": True,
        "dense_motion_params": {
            "block_expansion": 32, "max_features": 1024, "num_blocks": 5, "reshape_depth": 16, "compress": 4,
        },
    },
    "spade_generator_params": {
        "upscale": 2, "block_expansion": 64, "max_features": 512, "num_down_blocks": 2, "out_channels": 64,
    },
    "stitching_retargeting_module_params": {
        "stitching": {"input_size": 126, "hidden_sizes": [128, 128, 64], "output_size": 65},
        "lip": {"input_size": 65, "hidden_sizes": [128, 128, 64], "output_size": 63},
        "eye": {"input_size": 66, "hidden_sizes": [256, 256, 128, 128, 64], "output_size": 63},
    },
}  # fmt: skip
FAMILIES = ("fomm", "tpsmm", "liveportrait")
INPUT_SIDE = 256  # what every published loop's networks take
FRAME_SIDE = {"fomm": 256, "tpsmm": 256, "liveportrait": 512}  # what a job feeds our engine


def checkpoint_path(workdir: Path, family: str) -> Path:
    """The bench model as a user drops it into weights/: a file, or LivePortrait's folder."""
    return workdir / (family if family == "liveportrait" else f"{family}.pth.tar")


def save_model(workdir: Path, family: str) -> None:
    from engine import save_checkpoint
    from engine.families.liveportrait import save_liveportrait

    if family == "liveportrait":
        save_liveportrait(vox_model(family), checkpoint_path(workdir, family))
    else:
        save_checkpoint(checkpoint_path(workdir, family), vox_model(family))


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
    """fp32, and the low precisions this device runs natively."""
    from engine.hardware import native_bf16

    if quick:
        return ("fp32",)
    if device == "cuda":
        return ("fp32", "bf16", "fp16")
    return ("fp32", "bf16") if native_bf16() else ("fp32",)


def device_name(device: str) -> str:
    import torch

    from engine.hardware import describe_cpu

    if device == "cuda":
        return f"{torch.cuda.get_device_name()}; host CPU {describe_cpu()}"
    return describe_cpu()


def vox_model(family: str = "fomm"):
    """Published vox-256 widths, random weights, non-trivial batch-norm statistics as in a trained model."""
    import torch

    from engine.families import liveportrait, tpsmm
    from engine.families.fomm import build_model

    torch.manual_seed(0)
    if family == "liveportrait":
        model = liveportrait.build_model(LIVEPORTRAIT_PUBLISHED).eval()
    elif family == "tpsmm":
        model = tpsmm.build_model(TPSMM_VOX_256, (256, 256)).eval()
    else:
        model = build_model(VOX_256, (256, 256)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(1)  # so a saved copy loads with its AVD network trained
    return model


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


def _pointwise_conv_flops(x_shape, *shapes, out_shape=None, **_) -> int:
    """FLOPs of oneDNN's fused convolutions (engine/layers/fused.py), which FlopCounterMode does not know."""
    import torch
    from torch.utils.flop_counter import conv_flop_count

    binary = len(shapes) > 1 and all(
        isinstance(s, (tuple, list, torch.Size)) and len(s) == 4 for s in shapes[:2]
    )
    weight = shapes[1] if binary else shapes[0]  # binary: (x, other, weight, ...); else (x, weight, ...)
    return conv_flop_count(x_shape, weight, out_shape, transposed=False)


def gflop_per_frame(family: str, prepared: bool) -> float:
    """GFLOP per frame: the published loop's (keypoints and the whole model each frame), or,
    `prepared`, our path's (the Renderer's step: source work done once, the model folded and fused)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.reference_demo import published_step
    from engine.animator import Animator

    custom = {torch.ops.mkldnn._convolution_pointwise: _pointwise_conv_flops}
    model = vox_model(family)
    side = FRAME_SIDE[family] if prepared else INPUT_SIDE
    source, frame = torch.rand(1, 3, side, side), torch.rand(1, 3, side, side)
    with torch.no_grad():
        if not prepared:
            step = published_step(model, source, frame)
            with FlopCounterMode(display=False) as counter:
                step(frame)
            return counter.get_total_flops() / 1e9
        renderer = Animator(model)
        state = renderer.prepare_source(source)
        renderer.animate_batch(state, frame)  # sets the initial frame
        with FlopCounterMode(display=False, custom_mapping=custom) as counter:
            renderer.animate_batch(state, frame)
    return counter.get_total_flops() / 1e9


def run_plain_loop(family: str, frames: int, device: str) -> dict:
    """The published demo's loop: one frame at a time, float32, the whole model every frame."""
    import torch

    from bench.reference_demo import published_step

    torch.manual_seed(1)
    model = vox_model(family).to(device)
    source = torch.rand(1, 3, INPUT_SIDE, INPUT_SIDE, device=device)
    driving = torch.rand(frames + 1, 3, INPUT_SIDE, INPUT_SIDE, device=device)
    with torch.no_grad():
        step = published_step(model, source, driving[:1])
        step(driving[:1])  # warm-up
        synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        for t in range(1, frames + 1):
            step(driving[t : t + 1]).cpu()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds_per_frame": seconds / frames, "cpu_per_frame": cpu / frames, "peak_mb": peak_mb(device)}


def run_engine(
    family: str, checkpoint: str, frames: int, batch: int, precision: str, device: str, runtime: str
) -> dict:
    """Our path: source encoded once, frames in batches, the Renderer's inference step.

    Each batch starts as host uint8 frames and ends as host uint8 frames, as in a job. The model is
    the bench's checkpoint file, loaded as a worker loads it, so OpenVINO's cache entry (converted
    once into MODEL_CACHE, untimed) is the one `animate quantize` filled with int8 graphs.
    """
    import numpy as np
    import torch

    from engine import load_checkpoint
    from engine.animator import Animator
    from engine.frames import to_frames, to_tensor

    torch.manual_seed(1)
    started = time.perf_counter()
    model = load_checkpoint(checkpoint, device=device)
    renderer = Animator(model, device, runtime, MODEL_CACHE, precision=precision, batch_size=batch)
    load_seconds = time.perf_counter() - started
    side = FRAME_SIDE[family]
    source = torch.rand(1, 3, side, side)
    state = renderer.prepare_source(source, precision=precision)
    batches = max(1, frames // batch)
    driving = np.random.default_rng(1).integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
    with torch.inference_mode():
        for _ in range(3 if device == "cuda" else 1):  # warm-up (and the initial frame)
            to_frames(renderer.animate_batch(state, to_tensor(driving, device)))
        synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            to_frames(renderer.animate_batch(state, to_tensor(driving, device)))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    frames = batches * batch
    result = {
        "seconds_per_frame": seconds / frames,
        "cpu_per_frame": cpu / frames,
        "peak_mb": peak_mb(device),
        "load_s": load_seconds,
    }
    result["runtime"] = renderer.runtime  # what auto chose
    if renderer.runtime == "openvino":
        result["cache_hit"] = renderer.adapter.graphs.cache_hit
    return result


def run_model_load(checkpoint: str, device: str, runtime: str = "torch") -> dict:
    """A worker's or the CLI's model load: the checkpoint read and checked, then put on its runtime
    (OpenVINO: read from the bench's model cache; auto: the cached choice)."""
    import torch  # noqa: F401  (imported before the clock starts: start-up is measured separately)

    from engine import load_checkpoint
    from engine.animator import Animator

    start, cpu = time.perf_counter(), time.process_time()
    Animator(load_checkpoint(checkpoint, device=device), device, runtime, MODEL_CACHE, batch_size=4)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def default_runtimes(device: str) -> list[str]:
    """Every runtime this machine can run: torch, and on a CPU OpenVINO where its extra is installed."""
    import importlib.util

    openvino = device == "cpu" and importlib.util.find_spec("openvino") is not None
    return ["torch", "openvino", "auto"] if openvino else ["torch"]


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


def timed_process(cmd: list[str], check: bool = True) -> tuple[float | None, float]:
    """Wall and CPU (user + system) seconds of a child process run to its end; wall None where it
    failed and `check` is off (an int8 render of a model whose int8 graphs were not kept)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, check=check, cwd=ROOT, capture_output=True)
    wall = time.perf_counter() - start if result.returncode == 0 else None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def render_command(
    workdir: Path, family: str, runtime: str, precision: str, clip: str, device: str
) -> list[str]:
    return [
        sys.executable, "-m", "cli.main", "render", "--source", str(workdir / "source.png"),
        "--driving", str(workdir / clip), "--checkpoint", str(checkpoint_path(workdir, family)),
        "--out", str(workdir / f"out-{family}-{runtime}-{precision}.mp4"), "--precision", precision,
        "--crop", "none", "--device", device, "--runtime", runtime, "--cache-dir", str(MODEL_CACHE),
    ]  # fmt: skip


def auto_choice(workdir: Path, family: str, precision: str) -> str:
    """The runtime auto rendered with: `animate inspect` reads the choice the renders cached."""
    command = [
        sys.executable, "-m", "cli.main", "inspect", str(checkpoint_path(workdir, family)),
        "--runtime", "auto", "--precision", precision, "--cache-dir", str(MODEL_CACHE),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    return json.loads(result.stdout)["runtime"]["runtime"] if result.returncode == 0 else "unknown"


def reference_command(workdir: Path, family: str) -> list[str]:
    """The family's published demo's way (bench/reference_demo.py), as a whole process."""
    return [
        sys.executable, str(ROOT / "bench" / "reference_demo.py"),
        "--checkpoint", str(checkpoint_path(workdir, family)), "--source", str(workdir / "source.png"),
        "--driving", str(workdir / f"clip-{family}.mp4"),
        "--out", str(workdir / f"out-reference-{family}.mp4"),
    ]  # fmt: skip


CALIBRATION = ("d0", "d3", "d11", "d18")  # ../shared/media/clips: int8 calibration, and held out below
HELD_OUT = ("d12", "d19", "d20")


def quantize_command(workdir: Path, family: str, batch: int) -> list[str]:
    """`animate quantize` on the shared clips, into the bench's model cache."""
    clips = ROOT.parent / "shared" / "media" / "clips"
    return [
        sys.executable, "-m", "cli.main", "quantize", "--checkpoint", str(checkpoint_path(workdir, family)),
        "--calibration", *(str(clips / f"{name}.mp4") for name in CALIBRATION),
        "--held-out", *(str(clips / f"{name}.mp4") for name in HELD_OUT),
        "--frames", "4", "--batch-size", str(batch), "--cache-dir", str(MODEL_CACHE),
    ]  # fmt: skip


def quantize_model(workdir: Path, family: str, batch: int = 4) -> dict:
    """int8 graphs for the bench's model where they pass and pay (untimed, like a conversion); the
    report says why not otherwise."""
    result = subprocess.run(
        quantize_command(workdir, family, batch), cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode not in (0, 1):
        return {"kept": False, "reason": result.stderr.strip().splitlines()[-1]}
    return json.loads(result.stdout)


# the whole-process race's clip, as the issues state their targets
CLIP_FRAMES = {"fomm": 60, "tpsmm": 30, "liveportrait": 30}


def make_inputs(workdir: Path, families: list[str], clip_frames: int | None) -> None:
    import numpy as np
    from PIL import Image

    for family in families:
        save_model(workdir, family)
    for family in families:
        make_clip(workdir / f"clip-{family}.mp4", clip_frames or CLIP_FRAMES[family])
    make_clip(workdir / "one.mp4", 1)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
        workdir / "source.png"
    )


def print_fixed_cost(
    workdir: Path, families: list[str], runtimes: list[str], device: str, repeat: int
) -> None:
    """A worker's start (the model loaded onto each runtime, OpenVINO's cache hit) and a 1-frame
    `animate render` per runtime: the cost a process pays before its first frame."""
    print("\n| fixed cost of a run (median of runs) | runtime | wall s | CPU s |")
    print("|---|---|---|---|")
    for family in families:
        for runtime in runtimes:
            checkpoint = str(checkpoint_path(workdir, family))
            loads = [child(["load", family, checkpoint, runtime], device) for _ in range(repeat)]
            starts = [
                timed_process(render_command(workdir, family, runtime, "fp32", "one.mp4", device))
                for _ in range(repeat)
            ]
            print(
                f"| {family} worker start: checkpoint read and checked, the model on its runtime "
                f"| {runtime} | {statistics.median(r['seconds'] for r in loads):.2f} "
                f"| {statistics.median(r['cpu'] for r in loads):.2f} |"
            )
            print(
                f"| {family} whole `animate render` of a 1-frame clip: start-up, imports, load, ffmpeg, "
                f"first frame written | {runtime} | {statistics.median(w for w, _ in starts):.2f} "
                f"| {statistics.median(c for _, c in starts):.2f} |"
            )


def warm_caches(
    workdir: Path, families: list[str], runtimes: list[str], device: str, precisions: tuple[str, ...]
) -> None:
    """OpenVINO's conversions and auto's measurements, untimed, as a worker's first start pays them
    once (int8's quantization is print_quantization's)."""
    for family in families:
        for runtime in runtimes:
            for precision in precisions if runtime != "torch" else ():
                command = render_command(workdir, family, runtime, precision, "one.mp4", device)
                timed_process(command, check=False)


def print_whole_process(
    workdir: Path,
    families: list[str],
    runtimes: list[str],
    device: str,
    precisions: tuple[str, ...],
    repeat: int,
    frames: int | None,
) -> None:
    """Ours against each family's published demo's way, whole processes, interleaved run by run."""
    ours = [(f, r, p) for f in families for r in runtimes for p in precisions if (r, p) != ("torch", "int8")]
    names = [("reference", family) for family in families] + ours
    runs: dict = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            if name[0] == "reference":
                runs[name].append(timed_process(reference_command(workdir, name[1])))
            else:
                runs[name].append(
                    timed_process(render_command(workdir, *name, f"clip-{name[0]}.mp4", device), check=False)
                )
    counts = ", ".join(f"{family} {frames or CLIP_FRAMES[family]}" for family in families)
    print(
        f"\n| whole process, frames ({counts}), {repeat} run(s) each, interleaved "
        "| wall s (median) "
        "| CPU s | reference / ours, wall | reference / ours, CPU | runs, wall s |"
    )
    print("|---|---|---|---|---|---|")
    for name, values in runs.items():
        family = name[1] if name[0] == "reference" else name[0]
        if any(w is None for w, _ in values):
            why = "int8 graphs not kept (the int8 report)" if name[2] == "int8" else "failed"
            print(f"| {family}, `animate render --runtime {name[1]} --precision {name[2]}` | {why} | | | | |")
            continue
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        reference = runs[("reference", family)]
        ref_wall = statistics.median(w for w, _ in reference)
        ref_cpu = statistics.median(c for _, c in reference)
        if name[0] == "reference":
            label = f"{family}, published demo's way (bench/reference_demo.py)"
        else:
            label = f"{family}, `animate render --runtime {name[1]} --precision {name[2]}`"
            if name[1] == "auto":
                label += f" (chose {auto_choice(workdir, family, name[2])})"
        each = " ".join(f"{w:.1f}" for w, _ in values)
        print(
            f"| {label} | {wall:.1f} | {cpu:.1f} | {ref_wall / wall:.2f}x | {ref_cpu / cpu:.2f}x | {each} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each whole process (medians)")
    parser.add_argument("--child", nargs="+")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 and 4, fp32 only (also its peak)")
    parser.add_argument("--families", default="fomm,tpsmm", help="comma-separated: " + ", ".join(FAMILIES))
    parser.add_argument(
        "--clip-frames", type=int, help="frames of the whole-process clip (default: fomm 60, tpsmm 30)"
    )
    parser.add_argument(
        "--runtimes",
        help="comma-separated: torch, openvino (CPU); default: torch, and openvino where installed",
    )
    parser.add_argument(
        "--precisions", help="comma-separated; default: fp32 and what the device runs natively"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads in every measured process (OMP_NUM_THREADS)"
    )
    parser.add_argument("--whole-process-only", action="store_true", help="only the fixed cost and the race")
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every child process
    sys.path.insert(0, str(ROOT))
    device = args.device
    if args.child:
        kind, family, *rest = args.child
        if kind == "plain":
            result = run_plain_loop(family, int(rest[0]), device)
        elif kind == "engine":
            result = run_engine(family, rest[0], int(rest[1]), int(rest[2]), rest[3], device, rest[4])
        elif kind == "load":
            result = run_model_load(rest[0], device, rest[1])
        elif kind == "gflop":
            result = {"plain": gflop_per_frame(family, prepared=False), "ours": gflop_per_frame(family, True)}
        elif kind == "peak":
            result = {"peak": measure_matmul_peak(device, tuple(rest)), "device": device_name(device)}
        print(json.dumps(result))
        return

    families = args.families.split(",")
    if not set(families) <= set(FAMILIES):
        sys.exit(f"bench: --families takes {', '.join(FAMILIES)}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("bench: --device cuda: no CUDA device is available")
    runtimes = args.runtimes.split(",") if args.runtimes else default_runtimes(device)
    if not set(runtimes) <= {"torch", "openvino", "auto"}:
        sys.exit("bench: --runtimes takes torch, openvino and/or auto")
    if "openvino" in runtimes and device != "cpu":
        sys.exit("bench: the openvino runtime runs on the CPU only")
    precisions = tuple(args.precisions.split(",")) if args.precisions else precisions_for(device, args.quick)
    if not set(precisions) <= {"fp32", "bf16", "fp16", "int8"}:
        sys.exit("bench: --precisions takes fp32, bf16, fp16 and/or int8")
    machine = child(["peak", "-", *dict.fromkeys(["fp32", *(p for p in precisions if p != "int8")])], device)
    peak = machine["peak"]
    gflop = {family: child(["gflop", family], device) for family in families}
    print(f"# Engine benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}, {device}: {machine['device']}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    gflops = ", ".join(
        f"{f} {gflop[f]['plain']:.1f} published loop, {gflop[f]['ours']:.1f} ours" for f in families
    )
    peaks = ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in peak.items())
    print(f"matmul peak: {peaks}; GFLOP per frame: {gflops}\n")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        make_inputs(workdir, families, args.clip_frames)
        if "int8" in precisions:  # first: the engine rows' int8 runs on what it keeps
            print_quantization(workdir, families)
        if not args.whole_process_only:
            print_engine_rows(args, workdir, device, families, runtimes, gflop, peak, precisions)
        warm_caches(workdir, families, runtimes, device, precisions)
        print_fixed_cost(workdir, families, runtimes, device, args.repeat)
        print_whole_process(workdir, families, runtimes, device, precisions, args.repeat, args.clip_frames)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def print_quantization(workdir: Path, families: list[str]) -> None:
    """`animate quantize` on each bench model (untimed): int8 against fp32 at batch 4 and whether it
    was kept (random weights move the flow more than a trained model's)."""
    print("\n| int8 (`animate quantize`, batch 4) | fp32 s/frame | int8 s/frame | PSNR dB | flow px | kept |")
    print("|---|---|---|---|---|---|")
    for family in families:
        report = quantize_model(workdir, family)
        timings = report.get("seconds_per_frame", {})
        print(
            f"| {family} | {timings.get('fp32', float('nan')):.3f} | {timings.get('int8', float('nan')):.3f} "
            f"| {report.get('psnr_db', float('nan')):.1f} | {report.get('flow_pixels', float('nan')):.2f} "
            f"| {'yes' if report['kept'] else 'no'}: {report['reason']} |"
        )


def print_engine_rows(
    args: argparse.Namespace,
    workdir: Path,
    device: str,
    families: list[str],
    runtimes: list[str],
    gflop: dict[str, dict],
    peak: dict[str, float],
    precisions: tuple[str, ...],
) -> None:
    """The per-frame table: the published loop and our engine at each batch size and precision."""
    print(
        "| model | path | runtime | batch | precision | s/frame | CPU s/frame | frames/s | GFLOP/s "
        "| % of peak | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    batches = (1, 4) if args.quick else (1, 4, 16, 64) if device == "cuda" else (1, 4, 16)
    notes: list[str] = []
    for family in families:
        checkpoint = str(checkpoint_path(workdir, family))
        plain = child(["plain", family, str(args.frames)], device)
        spf = plain["seconds_per_frame"]
        print(
            f"| {family} | plain per-frame loop | torch | 1 | fp32 | {spf:.3f} "
            f"| {plain['cpu_per_frame']:.3f} | {1 / spf:.2f} | - | - | {plain['peak_mb']:.0f} |"
        )
        for runtime in runtimes:
            for precision in precisions:
                for batch in batches if (runtime, precision) != ("torch", "int8") else ():
                    frames = str(max(args.frames, batch))
                    try:
                        r = child(
                            ["engine", family, checkpoint, frames, str(batch), precision, runtime], device
                        )
                    except subprocess.CalledProcessError:
                        why = "int8 graphs not kept (the int8 report)" if precision == "int8" else "failed"
                        print(f"| {family} | engine | {runtime} | {batch} | {precision} | {why} | | | | | |")
                        continue
                    spf = r["seconds_per_frame"]
                    achieved = gflop[family]["ours"] / spf
                    share = f"{100 * achieved / peak[precision]:.0f}%" if precision in peak else "-"
                    label = runtime if r["runtime"] == runtime else f"{runtime}: {r['runtime']}"
                    print(
                        f"| {family} | engine | {label} | {batch} | {precision} | {spf:.3f} "
                        f"| {r['cpu_per_frame']:.3f} | {1 / spf:.2f} | {achieved:.0f} "
                        f"| {share} | {r['peak_mb']:.0f} |"
                    )
                    if r["runtime"] == "openvino" and not r["cache_hit"]:
                        notes.append(
                            f"openvino: converted the {family} model in {r['load_s']:.0f} s "
                            f"(cached in {MODEL_CACHE})"
                        )
    if "bf16" not in precisions and device == "cpu" and not args.quick:
        notes.append("bf16: not measured, this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    for note in dict.fromkeys(notes):
        print(f"\n{note}")


if __name__ == "__main__":
    main()
