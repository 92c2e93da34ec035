"""Exported graphs (ONNX, OpenVINO IR) and the OpenVINO runtime compute what our torch path computes.

The small published-layout fixtures at 64x64; conversions are the slow part (tens of seconds each
on 2 cores), so each is made once per module and shared.
"""

import json
import re
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import FOMM, TPSMM, need_shared
from tests.test_cli import cut
from worker.cli import main
from worker.export import BATCH, graph_set
from worker.export.files import MANIFEST
from worker.models import load_checkpoint
from worker.models.motion_transfer import convex_hull_area
from worker.pipeline import Renderer, RenderOptions
from worker.video_io import load_image, read_frames

ANIMATE = [sys.executable, "-m", "worker.cli"]
TOLERANCE = 1e-4  # fp32 against fp32, as the parity tests
MODES = {"relative_adapt": ("relative", True), "absolute": ("absolute", False)}


def run_animate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*ANIMATE, *map(str, args)], capture_output=True, text=True, timeout=600)


def small_model(name: str = "fomm-small"):
    model = load_checkpoint(need_shared(FOMM / f"{name}.pth.tar"))
    model.frame_shape = (64, 64)
    return model


@pytest.fixture(scope="module")
def frames() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixture's own source (1, 3, 64, 64) and six driving frames (6, 3, 64, 64)."""
    golden = np.load(need_shared(FOMM / "fomm-small.npz"))
    source = torch.from_numpy(golden["source"]).permute(2, 0, 1)[None].contiguous()
    return source, torch.from_numpy(golden["driving"]).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def torch_renderer() -> Renderer:
    return Renderer(small_model())


def torch_reference(renderer: Renderer, frames, mode: str, adapt: bool) -> dict[str, torch.Tensor]:
    """Our torch path's keypoints, source features and animated frames (batches of 4, then 2)."""
    source, driving = frames
    state = renderer.prepare_source(source, mode=mode, adapt_scale=adapt)
    prediction = torch.cat(
        [renderer.animate_batch(state, driving[:4]), renderer.animate_batch(state, driving[4:])]
    )
    return {
        "kp_source": state.kp_source["value"],
        "source_encoded": state.features.encoded,
        "prediction": prediction,
    }


def assert_close(name: str, ours, reference) -> None:
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape, name
    error = float(np.abs(ours - reference).max())
    assert error < TOLERANCE, f"{name}: max abs error {error:.2e}"


@pytest.mark.parametrize("name", ["fomm-small", "fomm-small-zero-order", "fomm-small-single-jacobian"])
def test_graph_modules_compute_what_the_renderer_computes(name, frames):
    """The three graphs, run as torch modules and fed as exporters see them, for every variant."""
    renderer = Renderer(small_model(name))
    graphs = graph_set(renderer.model)
    source, driving = frames
    for name_of_mode, (mode, adapt) in MODES.items():
        state = renderer.prepare_source(source, mode=mode, adapt_scale=adapt)
        reference = renderer.animate_batch(state, driving)
        with torch.no_grad():
            encoded, small = graphs.graphs["source"].module(source)
            kp = graphs.graphs["keypoints"].module(driving)
        assert_close(f"{name} source_encoded", encoded, state.features.encoded)
        kp_driving = dict(zip(("value", "jacobian"), kp, strict=False))
        feed = graphs.frame_feed(state, kp_driving)
        assert ("kp_driving_jacobian" in feed) == (name != "fomm-small-zero-order")
        inputs = [torch.from_numpy(feed[spec.name]) for spec in graphs.graphs["frame"].inputs]
        with torch.no_grad():
            frame = graphs.graphs["frame"]
            out = dict(zip([spec.name for spec in frame.outputs], frame.module(*inputs), strict=True))
        assert_close(f"{name} {name_of_mode}", out["prediction"], reference)
        assert out["deformation"].shape == (6, *small.shape[2:], 2)
        occlusion = renderer.model.generator.dense_motion_network.occlusion is not None
        assert ("occlusion_map" in out) == occlusion == (name != "fomm-small-zero-order")
        if occlusion:
            assert out["occlusion_map"].shape == (6, 1, *small.shape[2:])


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, small_checkpoint) -> Path:
    pytest.importorskip("onnx", reason="onnx is not installed: pip install 'animate[onnx]'")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed: pip install 'animate[onnx]'")
    out = tmp_path_factory.mktemp("export") / "small-onnx"
    result = run_animate("export", "--format", "onnx", "--checkpoint", small_checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_onnx_export_runs_in_onnxruntime_like_torch(onnx_export, frames, torch_renderer):
    """What docs/EXPORT.md tells a caller to do, with onnxruntime and numpy alone."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the dev extra)")
    manifest = json.loads((onnx_export / MANIFEST).read_text())
    assert manifest["format"] == "onnx" and manifest["batch"] == "dynamic"
    assert sorted(p.name for p in onnx_export.iterdir()) == [
        "frame.onnx", "keypoints.onnx", "manifest.json", "source.onnx",
    ]  # fmt: skip
    sessions = {name: ort.InferenceSession(onnx_export / g["file"]) for name, g in manifest["graphs"].items()}

    def run(name: str, **inputs) -> dict[str, np.ndarray]:
        outputs = [spec["name"] for spec in manifest["graphs"][name]["outputs"]]
        return dict(zip(outputs, sessions[name].run(outputs, inputs), strict=True))

    def keypoints(prefix: str, kp: dict) -> dict:
        return {prefix: kp["value"], f"{prefix}_jacobian": kp["jacobian"]}

    source, driving = (t.numpy() for t in frames)
    kp_source = run("keypoints", frames=source)
    features = run("source", source=source)
    kp_initial = run("keypoints", frames=driving[:1])
    for name, (mode, adapt) in MODES.items():
        reference = torch_reference(torch_renderer, frames, mode, adapt)
        area = convex_hull_area(kp_source["value"][0]) / convex_hull_area(kp_initial["value"][0])
        scale = np.array([np.sqrt(area) if adapt else 1.0], dtype=np.float32)
        predictions = []
        for batch in (driving[:4], driving[4:]):  # the batch dimension is dynamic
            out = run(
                "frame",
                **keypoints("kp_driving", run("keypoints", frames=batch)),
                **keypoints("kp_source", kp_source),
                **keypoints("kp_initial", kp_initial),
                movement_scale=scale,
                relative=np.array([mode == "relative"]),
                **features,
            )
            predictions.append(out["prediction"])
        assert_close("kp_source", kp_source["value"], reference["kp_source"])
        assert_close("source_encoded", features["source_encoded"], reference["source_encoded"])
        assert_close(f"{name} prediction", np.concatenate(predictions), reference["prediction"])


def test_the_documented_onnxruntime_example_reproduces_torch(onnx_export, frames, torch_renderer):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the dev extra)")
    docs = (Path(__file__).resolve().parents[1] / "docs" / "EXPORT.md").read_text()
    example = re.search(r"```python\n(import json, numpy.*?)```", docs, re.S).group(1)
    source, driving = (t.numpy() for t in frames)
    scope = {"source": source, "driving": driving}
    exec(example.replace('folder = "vox-onnx"', f"folder = {str(onnx_export)!r}"), scope)
    reference = torch_reference(torch_renderer, frames, mode="relative", adapt=False)["prediction"]
    assert_close("docs/EXPORT.md example", np.concatenate(scope["out"]), reference)


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def ov_renderer(ov_cache):
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'animate[openvino]'")
    steps = []
    renderer = Renderer(
        small_model(), runtime="openvino", cache_dir=ov_cache, on_converted=lambda *step: steps.append(step)
    )
    assert not renderer.adapter.graphs.cache_hit
    assert steps[0] == (0, 3) and steps[-1] == (3, 3)
    return renderer


def test_openvino_files_run_in_plain_openvino_like_torch(ov_renderer, frames, tmp_path):
    """The IR as any OpenVINO program reads it; and an export with a fixed batch and bf16 hints."""
    import openvino as ov

    from worker.export.files import export_graphs

    core = ov.Core()
    renderer = Renderer(small_model())
    source, driving = frames
    state = renderer.prepare_source(source)
    reference = renderer.animate_batch(state, driving[:2])
    frame = core.read_model(ov_renderer.adapter.graphs.folder / "frame.xml")  # the runtime's cache: an export
    frame.reshape({"kp_driving": [2, 10, 2], "kp_driving_jacobian": [2, 10, 2, 2]})
    frame = core.compile_model(frame, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    graphs = graph_set(renderer.model)
    graphs.graphs = {
        name: graphs.graphs[name] for name in ("keypoints", "source")
    }  # the frame graph is above
    out = tmp_path / "small-ov"
    manifest = export_graphs(graphs, out, "openvino", batch=2, precision="bf16")
    assert json.loads((out / MANIFEST).read_text()) == manifest and manifest["batch"] == 2
    hints = {name: g["compile"]["INFERENCE_PRECISION_HINT"] for name, g in manifest["graphs"].items()}
    assert hints == {"keypoints": "f32", "source": "bf16"}  # keypoints run in float32 whatever is asked
    keypoints = core.compile_model(out / "keypoints.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert list(keypoints.input("frames").get_shape()) == [2, 3, 64, 64]
    kp = keypoints({"frames": driving[:2].numpy()})
    kp_driving = {name: torch.from_numpy(kp[name]) for name in ("value", "jacobian")}
    assert_close(
        "openvino IR prediction", frame(graphs.frame_feed(state, kp_driving))["prediction"], reference
    )


def test_openvino_runtime_matches_torch_and_pads_the_last_batch(ov_renderer, torch_renderer, frames):
    for name, (mode, adapt) in MODES.items():
        reference = torch_reference(torch_renderer, frames, mode, adapt)
        ours = torch_reference(ov_renderer, frames, mode, adapt)
        for key in reference:
            assert_close(f"{name} {key}", ours[key], reference[key])
    sizes = {size for (name, _, size) in ov_renderer.adapter.graphs.compiled if name == "frame"}
    assert sizes == {4}  # the batch of 2 ran padded to 4, not compiled again


def test_a_second_load_reads_the_cache_without_converting(ov_renderer, ov_cache):
    folder = ov_renderer.adapter.graphs.folder
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}
    assert {"keypoints.xml", "source.bin", "frame.xml", "manifest.json"} <= set(files)
    steps = []
    again = Renderer(
        small_model(), runtime="openvino", cache_dir=ov_cache, on_converted=lambda *step: steps.append(step)
    )
    assert again.adapter.graphs.cache_hit and again.adapter.graphs.folder == folder and steps == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()} == files
    assert [p.name for p in ov_cache.iterdir()] == [folder.name]  # no stray partial folders


def test_the_cache_key_follows_the_weights(ov_cache):
    from worker.openvino_runtime import cache_entry, model_digest

    model = small_model()
    graphs = graph_set(model)
    with torch.no_grad():
        model.generator.final.bias.add_(1e-3)
    changed = cache_entry(ov_cache, graphs, model_digest(model))
    assert changed != cache_entry(ov_cache, graphs, model_digest(small_model()))


def test_the_bf16_policy_keeps_keypoints_flows_and_sampling_in_float32(ov_renderer):
    from worker.export.openvino_ir import KEEP_PRECISION_KEY, keep_float32_outside

    graph = ov_renderer.adapter.graphs.graph_set.graphs["frame"]
    model = ov_renderer.adapter.graphs.models["frame"].clone()
    keep_float32_outside(model, graph.low_precision_scopes)
    kept = {node.get_friendly_name(): KEEP_PRECISION_KEY in node.get_rt_info() for node in model.get_ops()}
    types = {node.get_friendly_name(): node.get_type_name() for node in model.get_ops()}
    low = [name for name, is_kept in kept.items() if types[name] == "Convolution" and not is_kept]
    convs_in_scopes = sum(  # plain or fused convolutions: a 4-D weight each
        weight.dim() == 4
        for scope in graph.low_precision_scopes
        for weight in graph.module.get_submodule(scope).parameters()
    )
    assert len(low) == convs_in_scopes > 0  # every convolution of the stacks may run bf16...
    for name, node_type in types.items():  # ...and nothing that computes geometry does
        if node_type in ("GridSample", "Softmax", "Einsum", "MatMul", "Exp", "Select", "Divide"):
            assert kept[name], name
    assert kept[next(n for n in types if n.startswith("__module.generator.dense_motion_network.mask/"))]


def test_bf16_flows_stay_within_a_hundredth_of_a_pixel(ov_renderer, frames):
    from worker.export.openvino_ir import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bfloat16: OpenVINO runs a bf16 request in float32")
    source, driving = frames
    flows = {}
    for precision in ("fp32", "bf16"):
        state = ov_renderer.prepare_source(source, precision=precision)
        state.kp_initial = ov_renderer.keypoints(driving[:1])
        feed = ov_renderer.adapter.graphs.graph_set.frame_feed(state, ov_renderer.keypoints(driving[:4]))
        flows[precision] = ov_renderer.adapter.graphs.run("frame", feed, precision)["deformation"]
    size = flows["fp32"].shape[1]
    pixels = np.abs(flows["bf16"] - flows["fp32"]).max() * (size - 1) / 2
    assert pixels < 0.01, f"flow moved {pixels:.4f} px in bf16"


def test_cli_render_on_openvino_equals_torch(
    ov_renderer, ov_cache, small_checkpoint, clip, portrait, tmp_path
):
    short = cut(clip, tmp_path / "short.mp4", 0.4, "-an")
    ours, reference = tmp_path / "openvino.mp4", tmp_path / "torch.mp4"
    result = run_animate(
        "render", "--source", portrait, "--driving", short, "--checkpoint", small_checkpoint,
        "--out", ours, "--crop", "none", "--runtime", "openvino", "--cache-dir", ov_cache,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    options = RenderOptions(crop="none", audio=False)
    Renderer(load_checkpoint(small_checkpoint)).render(load_image(portrait), short, reference, options)
    ours, reference = (np.stack(list(read_frames(path, 64, 64))).astype(float) for path in (ours, reference))
    assert ours.shape == reference.shape and len(ours) >= 10
    assert np.abs(ours - reference).mean() < 0.5  # of 255: the same frames but for an encoder rounding
    assert [p.name for p in ov_cache.iterdir()] == [
        ov_renderer.adapter.graphs.folder.name
    ]  # no second conversion


def test_openvino_gives_paste_back_the_motion_torch_gives(ov_renderer, torch_renderer, frames):
    """Paste-back reads the deformation and occlusion of every frame and of the still source."""
    source, driving = frames
    outputs = {}
    for runtime, renderer in (("openvino", ov_renderer), ("torch", torch_renderer)):
        state = renderer.prepare_source(source, mode="relative", adapt_scale=True)
        outputs[runtime] = {
            "frames": renderer.animate_with_motion(state, driving),
            "still": torch.inference_mode()(renderer.adapter.still)(state),
        }
    for what in ("frames", "still"):
        ours, reference = outputs["openvino"][what], outputs["torch"][what]
        assert set(ours) == set(reference) == {"prediction", "deformation", "occlusion_map"}
        for key in reference:
            assert_close(f"{what} {key}", ours[key], reference[key])


def test_the_openvino_runtime_refuses_what_it_cannot_run(ov_renderer, frames, ov_cache, small_checkpoint):
    from worker.errors import RenderError

    with pytest.raises(RenderError, match="fp32 or bf16"):
        ov_renderer.prepare_source(frames[0], precision="fp16")
    with pytest.raises(RenderError, match="CPU only"):
        Renderer(small_model(), "cuda", runtime="openvino", cache_dir=ov_cache)
    from worker.catalog import load_models

    loaded = load_models({"small": small_checkpoint}, "cpu", "openvino", ov_cache)
    assert (
        loaded["small"].renderer.runtime == "openvino" and loaded["small"].renderer.adapter.graphs.cache_hit
    )


def test_bad_export_arguments_exit_2_with_one_line(small_checkpoint, tmp_path, capsys):
    text = tmp_path / "notes.pth.tar"
    text.write_text("not a checkpoint")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    good = ["--checkpoint", small_checkpoint, "--out", tmp_path / "out"]
    cases = {
        "unknown format": ["--format", "tflite", *good],
        "bf16 onnx": ["--format", "onnx", "--precision", "bf16", *good],
        "fp16": ["--format", "openvino", "--precision", "fp16", *good],
        "batch 0": ["--format", "onnx", "--batch", "0", *good],
        "batch not a number": ["--format", "onnx", "--batch", "four", *good],
        "missing checkpoint": [
            "--format",
            "onnx",
            "--checkpoint",
            tmp_path / "absent.pth",
            "--out",
            tmp_path / "o",
        ],
        "text as checkpoint": ["--format", "onnx", "--checkpoint", text, "--out", tmp_path / "out"],
        "out not empty": ["--format", "onnx", "--checkpoint", small_checkpoint, "--out", tmp_path / "full"],
        "out parent missing": [
            "--format",
            "onnx",
            "--checkpoint",
            small_checkpoint,
            "--out",
            tmp_path / "a" / "b",
        ],
        "no format": good,
    }
    for name, args in cases.items():
        with pytest.raises(SystemExit) if name in ("batch not a number", "no format") else nullcontext():
            assert main(["export", *map(str, args)]) == 2, name
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("animate: error: "), (name, lines)
    result = run_animate("export", *cases["bf16 onnx"])  # and as a process of its own
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "notes.pth.tar"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_exported_shapes_name_the_batch(small_checkpoint):
    graphs = graph_set(Renderer(small_model()).model)
    frame = graphs.graphs["frame"].to_dict(batch=3)
    shapes = {spec["name"]: spec["shape"] for spec in frame["inputs"]}
    assert shapes["kp_driving"] == [3, 10, 2] and shapes["kp_source"] == [1, 10, 2]
    assert graphs.graphs["keypoints"].inputs[0].shape == (BATCH, 3, 64, 64)


def test_a_tpsmm_file_is_refused_with_one_line(tmp_path, capsys, ov_cache):
    """TPSMM has no export graphs (its spline fit, torch.linalg.solve, exports to neither format)."""
    checkpoint = need_shared(TPSMM / "tpsmm-small.pth.tar")
    assert (
        main(["export", "--format", "onnx", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")])
        == 2
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["animate: error: tpsmm models cannot be exported or run on OpenVINO yet (only fomm)"]
    assert list(tmp_path.iterdir()) == []
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'animate[openvino]'")
    from worker.catalog import load_models

    assert load_models({"tpsmm": checkpoint}, "cpu", "openvino", ov_cache) == {}  # left out, logged
    assert "tpsmm" in load_models({"tpsmm": checkpoint}, "cpu")  # torch still serves it
