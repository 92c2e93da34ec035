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

from cli.main import main
from engine import load_checkpoint, save_checkpoint
from engine.animator import Animator
from engine.export import BATCH, graph_set
from engine.export.files import MANIFEST
from engine.layers.geometry import convex_hull_area
from engine.media.video_io import load_image, read_frames
from engine.pipeline import RenderOptions, VideoPipeline
from engine.runtimes.openvino import ALIASES
from tests.conftest import FOMM, TPSMM, need_shared
from tests.integration.test_cli import cut

ANIMATE = [sys.executable, "-m", "cli.main"]
TOLERANCE = 1e-4  # fp32 against fp32, as the parity tests
BF16_TOLERANCE = 0.05  # OpenVINO's bf16 against torch's: the same policy, rounded in another order
MODES = {"relative_adapt": ("relative", True), "absolute": ("absolute", False)}


def run_animate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*ANIMATE, *map(str, args)], capture_output=True, text=True, timeout=600)


def small_model(name: str = "fomm-small"):
    model = load_checkpoint(need_shared(FOMM / f"{name}.pth.tar"))
    model.frame_shape = (64, 64)
    return model


def golden_frames(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixture's own source (1, 3, H, W) and driving frames (N, 3, H, W) from its golden file."""
    golden = np.load(need_shared(path))
    source = torch.from_numpy(golden["source"]).permute(2, 0, 1)[None].contiguous()
    return source, torch.from_numpy(golden["driving"]).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def frames() -> tuple[torch.Tensor, torch.Tensor]:
    """The FOMM fixture's source (1, 3, 64, 64) and six driving frames (6, 3, 64, 64)."""
    return golden_frames(FOMM / "fomm-small.npz")


@pytest.fixture(scope="module")
def torch_renderer() -> Animator:
    return Animator(small_model())


def torch_reference(renderer: Animator, frames, mode: str, adapt: bool) -> dict[str, torch.Tensor]:
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


def module_runner(graphs):
    """Runs a set's graphs as torch modules, fed and answering as the runtimes do (numpy by name)."""

    def run(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        graph = graphs.graphs[name]
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[spec.name])) for spec in graph.inputs]
        with torch.no_grad():
            outputs = graph.module(*tensors)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {spec.name: out.numpy() for spec, out in zip(graph.outputs, outputs, strict=True)}

    return run


def assert_close(name: str, ours, reference) -> None:
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape, name
    error = float(np.abs(ours - reference).max())
    assert error < TOLERANCE, f"{name}: max abs error {error:.2e}"


@pytest.mark.parametrize("name", ["fomm-small", "fomm-small-zero-order", "fomm-small-single-jacobian"])
def test_graph_modules_compute_what_the_renderer_computes(name, frames):
    """The three graphs, run as torch modules and fed as exporters see them, for every variant."""
    renderer = Animator(small_model(name))
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
        feed = graphs.frame_feed(state, kp_driving, driving, module_runner(graphs))
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


def export_onnx(tmp_path_factory, checkpoint: Path, name: str) -> Path:
    """`animate export --format onnx` of `checkpoint` into a new folder `name`."""
    pytest.importorskip("onnx", reason="onnx is not installed: pip install 'animate[onnx]'")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed: pip install 'animate[onnx]'")
    out = tmp_path_factory.mktemp("export") / name
    result = run_animate("export", "--format", "onnx", "--checkpoint", checkpoint, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, small_checkpoint) -> Path:
    return export_onnx(tmp_path_factory, small_checkpoint, "small-onnx")


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
    docs = (Path(__file__).resolve().parents[2] / "docs" / "EXPORT.md").read_text()
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
    renderer = Animator(
        small_model(), runtime="openvino", cache_dir=ov_cache, on_converted=lambda *step: steps.append(step)
    )
    assert not renderer.adapter.graphs.cache_hit
    assert steps[0] == (0, 3) and steps[-1] == (3, 3)
    return renderer


def test_openvino_files_run_in_plain_openvino_like_torch(ov_renderer, frames, tmp_path):
    """The IR as any OpenVINO program reads it; and an export with a fixed batch in bf16, compiled
    as its manifest says, computes our torch path's bf16."""
    import openvino as ov

    from engine.export.files import export_graphs

    core = ov.Core()
    renderer = Animator(small_model())
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
    compile_with = {name: g["compile"] for name, g in manifest["graphs"].items()}
    assert compile_with == {name: {"INFERENCE_PRECISION_HINT": "f32"} for name in ("keypoints", "source")}
    assert "bf16" in ir_types(core.read_model(out / "source.xml"), "Convolution")  # the policy is in the IR
    assert ir_types(core.read_model(out / "keypoints.xml"), "Convolution") == {"f32"}
    keypoints = core.compile_model(out / "keypoints.xml", "CPU", compile_with["keypoints"])
    assert list(keypoints.input("frames").get_shape()) == [2, 3, 64, 64]
    kp = keypoints({"frames": driving[:2].numpy()})
    kp_driving = {name: torch.from_numpy(kp[name]) for name in ("value", "jacobian")}
    assert_close(
        "openvino IR prediction",
        frame(graphs.frame_feed(state, kp_driving, driving[:2], module_runner(graphs)))["prediction"],
        reference,
    )
    encoded = core.compile_model(out / "source.xml", "CPU", compile_with["source"])(source.numpy())
    in_bf16 = renderer.prepare_source(source, precision="bf16").features.encoded
    assert np.abs(encoded["source_encoded"] - in_bf16.numpy()).max() < BF16_TOLERANCE


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
    again = Animator(
        small_model(), runtime="openvino", cache_dir=ov_cache, on_converted=lambda *step: steps.append(step)
    )
    assert again.adapter.graphs.cache_hit and again.adapter.graphs.folder == folder and steps == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()} == files
    assert sorted(p.name for p in ov_cache.iterdir()) == [ALIASES, folder.name]  # no stray partial folders


def test_a_cache_hit_by_the_checkpoint_file_neither_hashes_nor_runs_the_model(
    ov_renderer, ov_cache, monkeypatch, tmp_path
):
    """The file's identity finds the converted copy: no tensor hashed, no source graph run for its
    shapes. A file that changed (here: only its time) is hashed again and finds the same copy."""
    from engine.families.fomm import export
    from engine.runtimes import openvino

    folder = ov_renderer.adapter.graphs.folder

    def forbidden(*_):
        raise AssertionError("a cache hit by the file runs no model and hashes no tensor")

    with monkeypatch.context() as patched:
        patched.setattr(openvino, "model_digest", forbidden)
        patched.setattr(export.SourceGraph, "forward", forbidden)
        again = Animator(small_model(), runtime="openvino", cache_dir=ov_cache)
    assert again.adapter.graphs.cache_hit and again.adapter.graphs.folder == folder
    copy = tmp_path / "copy.pth.tar"
    copy.write_bytes((FOMM / "fomm-small.pth.tar").read_bytes())
    model = load_checkpoint(copy)
    model.frame_shape = (64, 64)
    hashed, digest = [], openvino.model_digest
    monkeypatch.setattr(openvino, "model_digest", lambda m: hashed.append(1) or digest(m))
    moved = Animator(model, runtime="openvino", cache_dir=ov_cache)
    assert hashed == [1] and moved.adapter.graphs.cache_hit and moved.adapter.graphs.folder == folder


def test_openvino_sessions_batched_equal_each_session_alone(ov_renderer, frames):
    source, driving = frames
    sources = [source, source.flip(3)]
    alone = []
    for src, frame in zip(sources, driving[:2], strict=True):
        state = ov_renderer.prepare_source(src)
        alone.append(ov_renderer.animate_batch(state, frame[None]))
    states = [ov_renderer.prepare_source(src) for src in sources]
    together = ov_renderer.animate_sessions(states, driving[:2])
    assert_close("sessions", together, torch.cat(alone))
    assert not torch.equal(alone[0], alone[1])


def test_the_cache_key_follows_the_weights(ov_cache):
    from engine.runtimes.openvino import cache_entry, model_digest

    model = small_model()
    graphs = graph_set(model)
    with torch.no_grad():
        model.generator.final.bias.add_(1e-3)
    changed = cache_entry(ov_cache, graphs, model_digest(model))
    assert changed != cache_entry(ov_cache, graphs, model_digest(small_model()))


def test_the_cache_key_follows_the_graphs_inputs(ov_cache):
    """The same weights with and without a trained AVD network make frame graphs with and without
    an `avd` input: two entries, or a graph would be fed an input it does not have."""
    from engine.runtimes.openvino import cache_entry, model_digest

    model = tpsmm_model()
    assert model.avd_trained
    digest, with_avd = model_digest(model), graph_set(model)
    model.avd_trained = False
    without_avd = graph_set(model)
    assert [s.name for s in with_avd.graphs["frame"].inputs] != [
        s.name for s in without_avd.graphs["frame"].inputs
    ]
    assert cache_entry(ov_cache, with_avd, digest) != cache_entry(ov_cache, without_avd, digest)


def ir_types(model, node_type: str) -> set[str]:
    """The element types of the outputs of a model's nodes of one type."""
    return {
        node.get_output_element_type(0).get_type_name()
        for node in model.get_ops()
        if node.get_type_name() == node_type
    }


GEOMETRY = ("GridSample", "Softmax", "Einsum", "MatMul", "Exp", "Log", "Select", "Divide", "TopK")


def convs_in_scopes(graph) -> int:
    """Plain or fused convolutions of a graph's low-precision scopes: a 4-D weight each."""
    return sum(
        weight.dim() == 4
        for scope in graph.low_precision_scopes
        for weight in graph.module.get_submodule(scope).parameters()
    )


def assert_bf16_policy(graphs, name: str = "frame") -> dict[str, tuple[str, str]]:
    """Under bf16, every convolution of a graph's low-precision scopes has bfloat16 types in the
    graph and no node that computes geometry does; returns every node's type and element type."""
    from engine.export.openvino_ir import lower_to_bf16

    graph = graphs.graph_set.graphs[name]
    model = graphs.models[name].clone()
    lower_to_bf16(model, graph.low_precision_scopes)
    types = {
        node.get_friendly_name(): (node.get_type_name(), node.get_output_element_type(0).get_type_name())
        for node in model.get_ops()
    }
    low = [node for node, (kind, element) in types.items() if kind == "Convolution" and element == "bf16"]
    assert len(low) == convs_in_scopes(graph) > 0  # every convolution of the stacks runs bf16...
    for node, (kind, element) in types.items():  # ...and nothing that computes geometry does
        if kind in GEOMETRY:
            assert element == "f32", node
    return types


def test_the_bf16_policy_keeps_keypoints_flows_and_sampling_in_float32(ov_renderer):
    types = assert_bf16_policy(ov_renderer.adapter.graphs)
    dense_motion = [
        element
        for node, (kind, element) in types.items()
        if node.startswith("__module.generator.dense_motion_network") and kind == "Convolution"
    ]
    assert dense_motion and set(dense_motion) == {"f32"}  # FOMM's dense motion makes the flows


def compiled_alone(renderer: Animator, name: str, precision: str, batch: int):
    """Graph `name` compiled in `precision` whatever the CPU, outside the runtime's own compiled set
    (the runtime itself runs bf16 in float32 where the CPU has no native bf16)."""
    from engine.export.openvino_ir import compile_graph

    graphs = renderer.adapter.graphs
    return compile_graph(
        graphs.core, graphs.models[name].clone(), graphs.graph_set.graphs[name], batch, precision
    )


def openvino_flows(renderer: Animator, frames, precision: str) -> np.ndarray:
    """The frame graph's flows (4, h, w, 2) for four driving frames, compiled in `precision`."""
    source, driving = frames
    state = renderer.prepare_source(source, precision="fp32")
    state.kp_initial = renderer.keypoints(driving[:1])
    graphs = renderer.adapter.graphs.graph_set
    feed = graphs.frame_feed(state, renderer.keypoints(driving[:4]), driving[:4], module_runner(graphs))
    return compiled_alone(renderer, "frame", precision, 4)(feed)["deformation"]


@pytest.mark.parametrize("family", ["fomm", "tpsmm"])
def test_bf16_flows_stay_within_a_hundredth_of_a_pixel(family, request):
    """On a CPU with native bf16 the stacks run in bf16 and the flows do not move; elsewhere the
    same graphs run (OpenVINO computes them in float32) and must agree too."""
    renderer, frames = request.getfixturevalue(f"{family}_openvino")
    flows = {precision: openvino_flows(renderer, frames, precision) for precision in ("fp32", "bf16")}
    size = flows["fp32"].shape[1]
    pixels = np.abs(flows["bf16"] - flows["fp32"]).max() * (size - 1) / 2
    assert pixels < 0.01, f"flow moved {pixels:.4f} px in bf16"


@pytest.fixture(scope="module")
def fomm_openvino(ov_renderer, frames):
    return ov_renderer, frames


@pytest.fixture(scope="module")
def tpsmm_openvino(tpsmm_ov_renderer, tpsmm_frames):
    return tpsmm_ov_renderer, tpsmm_frames


def runtime_precisions(compiled) -> dict[str, set[str]]:
    """What a compiled model's nodes run in, by node type (the CPU plugin's execution graph)."""
    precisions: dict[str, set[str]] = {}
    for node in compiled.get_runtime_model().get_ops():
        info = node.get_rt_info()
        precisions.setdefault(info["layerType"].astype(str), set()).add(info["runtimePrecision"].astype(str))
    return precisions


@pytest.mark.native_bf16
@pytest.mark.parametrize("family", ["fomm", "tpsmm"])
def test_on_a_cpu_with_native_bf16_openvino_runs_the_stacks_and_nothing_else_in_bf16(family, request):
    """The CPU plugin's own choice here is bf16 everywhere; fp32 asks for f32, bf16 gets the policy."""
    from engine.export.openvino_ir import cpu_has_bf16

    renderer, _ = request.getfixturevalue(f"{family}_openvino")
    graphs = renderer.adapter.graphs
    assert cpu_has_bf16(graphs.core) and renderer.adapter.native_bf16
    for name, graph in graphs.graph_set.graphs.items():
        fp32 = runtime_precisions(compiled_alone(renderer, name, "fp32", 2))
        assert "bf16" not in set().union(*fp32.values()), name
        bf16 = runtime_precisions(compiled_alone(renderer, name, "bf16", 2))
        assert ("bf16" in bf16.get("Convolution", set())) == (convs_in_scopes(graph) > 0), name
        for kind in GEOMETRY:
            assert "bf16" not in bf16.get(kind, set()), (name, kind)


@pytest.mark.parametrize(
    "precision", ["fp32", pytest.param("bf16", marks=pytest.mark.native_bf16)]
)  # elsewhere OpenVINO runs bf16 in float32 and torch emulates it
def test_cli_render_on_openvino_equals_torch(
    precision, ov_renderer, ov_cache, small_checkpoint, clip, portrait, tmp_path
):
    short = cut(clip, tmp_path / "short.mp4", 0.4, "-an")
    ours, reference = tmp_path / "openvino.mp4", tmp_path / "torch.mp4"
    cached = sorted(p.name for p in ov_cache.iterdir())
    assert ov_renderer.adapter.graphs.folder.name in cached
    result = run_animate(
        "render", "--source", portrait, "--driving", short, "--checkpoint", small_checkpoint,
        "--out", ours, "--crop", "none", "--runtime", "openvino", "--cache-dir", ov_cache,
        "--precision", precision,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    options = RenderOptions(crop="none", audio=False, precision=precision)
    VideoPipeline(Animator(load_checkpoint(small_checkpoint))).render(
        load_image(portrait), short, reference, options
    )
    ours, reference = (np.stack(list(read_frames(path, 64, 64))).astype(float) for path in (ours, reference))
    assert ours.shape == reference.shape and len(ours) >= 10
    if precision == "fp32":
        assert np.abs(ours - reference).mean() < 0.5  # of 255: the same frames but for an encoder rounding
    else:  # the same policy, rounded in another order: as far from torch's bf16 as each is from fp32
        assert 10 * np.log10(255**2 / ((ours - reference) ** 2).mean()) >= 40
    assert sorted(p.name for p in ov_cache.iterdir()) == cached  # no second conversion


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
    from engine.errors import RenderError

    with pytest.raises(RenderError, match="fp32, bf16 or int8"):
        ov_renderer.prepare_source(frames[0], precision="fp16")
    with pytest.raises(RenderError, match="CPU only"):
        Animator(small_model(), "cuda", runtime="openvino", cache_dir=ov_cache)
    from worker.catalog import load_models

    loaded = load_models({"small": small_checkpoint}, "cpu", "openvino", ov_cache)
    assert (
        loaded["small"].animator.runtime == "openvino" and loaded["small"].animator.adapter.graphs.cache_hit
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
    graphs = graph_set(Animator(small_model()).model)
    frame = graphs.graphs["frame"].to_dict(batch=3)
    shapes = {spec["name"]: spec["shape"] for spec in frame["inputs"]}
    assert shapes["kp_driving"] == [3, 10, 2] and shapes["kp_source"] == [1, 10, 2]
    assert graphs.graphs["keypoints"].inputs[0].shape == (BATCH, 3, 64, 64)


# TPSMM: its spline fit's solve in operations the exporters take, then its graphs as torch modules,
# in ONNX Runtime and in the OpenVINO runtime.

TPSMM_MODES = {  # what tpsmm-small renders: name -> mode, adapt_scale, background_motion
    "relative_adapt": ("relative", True, False),
    "relative": ("relative", False, False),
    "absolute": ("absolute", False, False),
    "avd": ("avd", False, False),
    "absolute_background": ("absolute", False, True),
}
MOTION = ("prediction", "deformation", "occlusion_map")


def tpsmm_model(name: str = "tpsmm-small"):
    model = load_checkpoint(need_shared(TPSMM / f"{name}.pth.tar"))
    model.frame_shape = (64, 64)
    return model


def tpsmm_modes(model) -> dict[str, tuple[str, bool, bool]]:
    return {
        name: (mode, adapt, background)
        for name, (mode, adapt, background) in TPSMM_MODES.items()
        if mode in model.modes and (model.background_motion or not background)
    }


@pytest.fixture(scope="module")
def tpsmm_frames() -> tuple[torch.Tensor, torch.Tensor]:
    """The TPSMM fixture's source (1, 3, 64, 64) and five driving frames (5, 3, 64, 64)."""
    return golden_frames(TPSMM / "tpsmm-small.npz")


@pytest.fixture(scope="module")
def tpsmm_checkpoint(tmp_path_factory) -> Path:
    """tpsmm-small (3 splines, AVD network, background predictor) re-saved at its 64x64 frame size."""
    path = tmp_path_factory.mktemp("tpsmm") / "tpsmm-small.pth.tar"
    save_checkpoint(path, tpsmm_model())
    return path


@pytest.fixture(scope="module")
def tpsmm_torch_renderer() -> Animator:
    return Animator(tpsmm_model())


def tpsmm_reference(renderer: Animator, frames, mode: str, adapt: bool, background: bool) -> dict:
    """A renderer's per-job tensors, its frames with their motion (batches of 3, then 2) and the
    still source that paste-back compares them with."""
    source, driving = frames
    state = renderer.prepare_source(source, mode=mode, adapt_scale=adapt, background_motion=background)
    batches = [renderer.animate_with_motion(state, batch) for batch in (driving[:3], driving[3:])]
    still = torch.inference_mode()(renderer.adapter.still)(state)
    return {
        "kp_source": state.kp_source["fg_kp"],
        **{f"encoder_{i}": level for i, level in enumerate(state.features.encoder_maps)},
        **{key: torch.cat([batch[key] for batch in batches]) for key in MOTION},
        **{f"still {key}": still[key] for key in MOTION},
    }


def well_conditioned_systems(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """n random 8x8 systems U diag(s) V^T x = b, s in [1, 10] (condition number at most 10)."""
    generator = torch.Generator().manual_seed(0)
    u, v = (torch.linalg.qr(torch.randn(n, 8, 8, generator=generator, dtype=torch.float64))[0] for _ in "uv")
    singular_values = 1 + 9 * torch.rand(n, 8, generator=generator, dtype=torch.float64)
    matrix = u @ torch.diag_embed(singular_values) @ v.transpose(1, 2)
    return matrix.to(dtype), torch.randn(n, 8, 2, generator=generator, dtype=torch.float64).to(dtype)


def spline_systems(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The systems TPSMM solves for the fixtures' frames in every mode, (S, 8, 8) and (S, 8, 2)."""
    from engine.families.tpsmm import relative_kp
    from engine.families.tpsmm.tps import fit_system

    systems = []
    for name in ("tpsmm-small", "tpsmm-small-nobg"):
        model = load_checkpoint(need_shared(TPSMM / f"{name}.pth.tar")).to(dtype)
        golden = np.load(TPSMM / f"{name}.npz")
        source = torch.from_numpy(golden["source"]).permute(2, 0, 1)[None].to(dtype)
        driving = torch.from_numpy(golden["driving"]).permute(0, 3, 1, 2).to(dtype)
        with torch.no_grad():
            kp_source, kp_driving = model.kp_detector(source), model.kp_detector(driving)
            kp_source_n = {"fg_kp": kp_source["fg_kp"].expand_as(kp_driving["fg_kp"])}
            moved = [
                kp_driving,
                relative_kp(kp_source, kp_driving, {"fg_kp": kp_driving["fg_kp"][:1]}),
                model.avd_network(kp_source_n, kp_driving),
            ]
        for kp_norm in moved:
            n = kp_norm["fg_kp"].shape[0]
            systems.append(
                fit_system(kp_norm["fg_kp"].view(n, -1, 5, 2), kp_source_n["fg_kp"].view(n, -1, 5, 2))
            )
    matrices = torch.cat([matrix.reshape(-1, 8, 8) for matrix, _ in systems])
    return matrices, torch.cat([rhs.reshape(-1, 8, 2) for _, rhs in systems])


@pytest.mark.parametrize("systems", ["well-conditioned", "splines"])
def test_the_exportable_solve_computes_what_torch_linalg_solve_does(systems):
    """The splines' own systems (conditioned up to about 200) in float32 to 1e-6 of the solution's
    scale (about 1e-5 absolute), no further from the float64 solution than torch.linalg.solve's own
    float32 result is; random well-conditioned ones to 1e-5; float64 to 1e-12."""
    from engine.families.tpsmm.tps import gauss_jordan_solve

    for dtype in (torch.float32, torch.float64):
        matrix, rhs = (
            well_conditioned_systems(2000, dtype) if systems == "well-conditioned" else spline_systems(dtype)
        )
        ours, reference = gauss_jordan_solve(matrix, rhs), torch.linalg.solve(matrix, rhs)
        error = float((ours - reference).abs().max())
        if dtype == torch.float64:
            assert error < 1e-12, f"{systems} float64: max abs error {error:.2e}"
            continue
        scale = float(reference.abs().max())
        assert error < 1e-6 * max(scale, 10), (
            f"{systems}: max abs error {error:.2e} (solutions to {scale:.1f})"
        )
        exact = torch.linalg.solve(matrix.double(), rhs.double())
        ours_off, reference_off = (float((x.double() - exact).abs().max()) for x in (ours, reference))
        assert ours_off < 2 * reference_off + 1e-6, (ours_off, reference_off)


@pytest.mark.parametrize("name", ["tpsmm-small", "tpsmm-small-nobg"])
def test_tpsmm_graph_modules_compute_what_the_renderer_computes(name, tpsmm_frames, monkeypatch):
    """The graphs as torch modules, fed by the set's own feed functions, in every mode the model
    offers; the frame graph with the splines fitted as the exporters see them (Gauss-Jordan)."""
    renderer = Animator(tpsmm_model(name))
    graphs = graph_set(renderer.model)
    assert list(graphs.graphs) == [
        "keypoints",
        "source",
        *(["background"] * renderer.model.background_motion),
        "frame",
    ]
    run = module_runner(graphs)
    source, driving = tpsmm_frames
    for name_of_mode, (mode, adapt, background) in tpsmm_modes(renderer.model).items():
        state = renderer.prepare_source(source, mode=mode, adapt_scale=adapt, background_motion=background)
        reference = renderer.animate_with_motion(state, driving)
        kp_source = run("keypoints", {"frames": source.numpy()})
        assert_close("kp_source", kp_source["fg_kp"], state.kp_source["fg_kp"])
        features = graphs.source_features(run("source", graphs.source_feed(source, state.kp_source)), source)
        for i, level in enumerate(state.features.encoder_maps):
            assert_close(f"encoder_{i}", features.encoder_maps[i], level)
        assert_close("source_heatmap", features.heatmap, state.features.heatmap)
        kp_driving = {"fg_kp": torch.from_numpy(run("keypoints", {"frames": driving.numpy()})["fg_kp"])}
        with monkeypatch.context() as exporting:
            exporting.setattr("engine.families.tpsmm.tps.exporting", lambda: True)
            out = run("frame", graphs.frame_feed(state, kp_driving, driving, run))
        for key in MOTION:
            assert_close(f"{name} {name_of_mode} {key}", out[key], reference[key])


@pytest.fixture(scope="module")
def tpsmm_onnx_export(tmp_path_factory, tpsmm_checkpoint) -> Path:
    return export_onnx(tmp_path_factory, tpsmm_checkpoint, "tpsmm-onnx")


def test_tpsmm_onnx_export_runs_in_onnxruntime_like_torch(
    tpsmm_onnx_export, tpsmm_frames, tpsmm_torch_renderer
):
    """The manifest's steps with onnxruntime and numpy alone, every mode, a dynamic batch."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the dev extra)")
    manifest = json.loads((tpsmm_onnx_export / MANIFEST).read_text())
    assert manifest["family"] == "tpsmm" and manifest["batch"] == "dynamic"
    assert sorted(p.name for p in tpsmm_onnx_export.iterdir()) == [
        "background.onnx", "frame.onnx", "keypoints.onnx", "manifest.json", "source.onnx",
    ]  # fmt: skip
    graphs = manifest["graphs"]
    sessions = {name: ort.InferenceSession(tpsmm_onnx_export / g["file"]) for name, g in graphs.items()}

    def run(name: str, **inputs) -> dict[str, np.ndarray]:
        outputs = [spec["name"] for spec in graphs[name]["outputs"]]
        feed = {spec["name"]: inputs[spec["name"]] for spec in graphs[name]["inputs"]}
        return dict(zip(outputs, sessions[name].run(outputs, feed), strict=True))

    source, driving = (t.numpy() for t in tpsmm_frames)
    kp_source = run("keypoints", frames=source)["fg_kp"]
    features = run("source", source=source, kp_source=kp_source)
    kp_initial = run("keypoints", frames=driving[:1])["fg_kp"]
    area = convex_hull_area(kp_source[0]) / convex_hull_area(kp_initial[0])
    for name, (mode, adapt, background) in TPSMM_MODES.items():
        reference = tpsmm_reference(tpsmm_torch_renderer, tpsmm_frames, mode, adapt, background)
        outputs = []
        for batch in (driving[:3], driving[3:]):
            if background:
                bg_param = run("background", frames=batch, **features)["bg_param"]
            else:
                bg_param = np.repeat(np.eye(3, dtype=np.float32)[None], len(batch), axis=0)
            outputs.append(
                run(
                    "frame",
                    kp_driving=run("keypoints", frames=batch)["fg_kp"],
                    kp_source=kp_source,
                    kp_initial=kp_initial,
                    movement_scale=np.array([np.sqrt(area) if adapt else 1.0], dtype=np.float32),
                    relative=np.array([mode == "relative"]),
                    avd=np.array([mode == "avd"]),
                    bg_param=bg_param,
                    source=source,
                    **features,
                )
            )
        assert_close("kp_source", kp_source, reference["kp_source"])
        for level in (key for key in features if key.startswith("encoder_")):
            assert_close(level, features[level], reference[level])
        for key in MOTION:
            assert_close(f"{name} {key}", np.concatenate([out[key] for out in outputs]), reference[key])


@pytest.fixture(scope="module")
def tpsmm_ov_renderer(ov_cache, tpsmm_checkpoint):
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'animate[openvino]'")
    steps = []
    renderer = Animator(
        load_checkpoint(tpsmm_checkpoint),
        runtime="openvino",
        cache_dir=ov_cache,
        on_converted=lambda *step: steps.append(step),
    )
    assert not renderer.adapter.graphs.cache_hit
    assert steps[0] == (0, 4) and steps[-1] == (4, 4)
    return renderer


def test_openvino_runtime_runs_tpsmm_like_torch_in_every_mode(
    tpsmm_ov_renderer, tpsmm_torch_renderer, tpsmm_frames
):
    """Frames, the motion paste-back reads and the still source, in each mode tpsmm-small renders;
    the last batch (2 frames) and the still source (1) run padded to the first batch's size (3)."""
    for name, (mode, adapt, background) in TPSMM_MODES.items():
        reference = tpsmm_reference(tpsmm_torch_renderer, tpsmm_frames, mode, adapt, background)
        ours = tpsmm_reference(tpsmm_ov_renderer, tpsmm_frames, mode, adapt, background)
        for key in reference:
            assert_close(f"{name} {key}", ours[key], reference[key])
    compiled = tpsmm_ov_renderer.adapter.graphs.compiled
    assert {size for (name, _, size) in compiled if name in ("frame", "background")} == {3}
    assert tpsmm_ov_renderer.keypoints(tpsmm_frames[1])["fg_kp"].shape == (5, 15, 2)


def test_the_bf16_policy_keeps_tpsmm_geometry_in_float32(tpsmm_ov_renderer):
    """As low_precision_tpsmm in torch: convolution stacks in bf16; keypoints, the spline fit,
    flows and sampling in float32; the background graph wholly in float32."""
    assert_bf16_policy(tpsmm_ov_renderer.adapter.graphs)
    frame = tpsmm_ov_renderer.adapter.graphs.models["frame"]
    assert any(node.get_type_name() == "TopK" for node in frame.get_ops())  # the solve's pivots: kept
    source = tpsmm_ov_renderer.adapter.graphs.graph_set.graphs["source"]
    assert source.low_precision_scopes == ("inpainting_network.first", "inpainting_network.down_blocks")
    assert tpsmm_ov_renderer.adapter.graphs.graph_set.graphs["background"].low_precision_scopes == ()


def test_a_worker_on_openvino_serves_tpsmm_files(tpsmm_ov_renderer, tpsmm_checkpoint, ov_cache):
    from worker.catalog import load_models

    loaded = load_models({"tpsmm": tpsmm_checkpoint}, "cpu", "openvino", ov_cache)
    renderer = loaded["tpsmm"].animator
    assert renderer.runtime == "openvino" and renderer.adapter.graphs.cache_hit
    assert renderer.adapter.graphs.folder == tpsmm_ov_renderer.adapter.graphs.folder
    assert loaded["tpsmm"].describe().modes == ["relative", "absolute", "avd"]
