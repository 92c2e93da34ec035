"""int8: the convolution stacks quantized (NNCF) on real frames, geometry in float, within 30 dB PSNR
and 0.5 px of fp32 on held-out clips; `animate quantize` keeps the graphs only where they pay."""

import json
import subprocess
import sys

import pytest
import torch

from engine import load_checkpoint, save_checkpoint
from engine.animator import Animator
from engine.errors import RenderError
from engine.export.openvino_ir import in_scopes
from engine.export.quantize import (
    INT8,
    MAX_FLOW_PIXELS,
    MIN_PSNR,
    clip_jobs,
    compare,
    record_feeds,
    write_int8,
)
from tests.conftest import FOMM, MEDIA, ROOT, TPSMM, need_shared

pytest.importorskip("openvino", reason="openvino is not installed: pip install 'animate[openvino]'")
pytest.importorskip("nncf", reason="nncf is not installed: pip install 'animate[int8]'")

CALIBRATION = ["d0", "d3", "d11"]
HELD_OUT = ["d12", "d19"]


def clips(names: list[str]) -> list[str]:
    return [str(need_shared(MEDIA / "clips" / f"{name}.mp4")) for name in names]


def small(path, tmp_path):
    """A fixture re-saved with its 64 px frame size (what it was trained at)."""
    model = load_checkpoint(need_shared(path))
    model.frame_shape = (64, 64)
    out = tmp_path / path.name
    save_checkpoint(out, model)
    return out


@pytest.mark.parametrize(
    "fixture", [FOMM / "fomm-small.pth.tar", TPSMM / "tpsmm-small.pth.tar"], ids=["fomm", "tpsmm"]
)
def test_int8_stays_within_the_bounds_and_quantizes_only_the_convolution_stacks(fixture, tmp_path):
    renderer = Animator(
        load_checkpoint(small(fixture, tmp_path)), runtime="openvino", cache_dir=tmp_path / "cache"
    )
    adapter = renderer.adapter
    calibration = clip_jobs(clips(CALIBRATION), (64, 64), 6)
    held_out = clip_jobs(clips(HELD_OUT), (64, 64), 6)
    folder = write_int8(adapter.graphs, record_feeds(adapter, calibration))
    assert adapter.graphs.has_int8() and folder.name == INT8
    psnr, flow = compare(adapter, held_out)
    assert psnr >= MIN_PSNR and flow <= MAX_FLOW_PIXELS, (psnr, flow)
    assert psnr < 80, "the int8 graphs are the ones rendered"
    graph = adapter.graphs.graph_set.graphs["frame"]
    model = adapter.graphs.core.read_model(str(folder / "frame.xml"))
    quantized = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert quantized, "convolutions are quantized"
    for op in quantized:  # each quantizes the input of a convolution inside the low-precision scopes
        consumers = [i.get_node() for o in op.outputs() for i in o.get_target_inputs()]
        consumers = [c for c in consumers if c.get_type_name() != "ShapeOf"]  # reads the shape only
        assert all(in_scopes(c.get_friendly_name(), graph.low_precision_scopes) for c in consumers), op


def test_int8_needs_the_openvino_runtime_and_quantized_graphs(tmp_path):
    source = torch.rand(1, 3, 64, 64)
    on_torch = Animator(load_checkpoint(small(FOMM / "fomm-small.pth.tar", tmp_path)))
    with pytest.raises(RenderError, match="int8 runs on the openvino runtime") as error:
        on_torch.prepare_source(source, precision="int8")
    assert error.value.code == "invalid_option"
    checkpoint = small(FOMM / "fomm-small.pth.tar", tmp_path)
    fresh = Animator(load_checkpoint(checkpoint), runtime="openvino", cache_dir=tmp_path / "cache")
    with pytest.raises(RenderError, match="animate quantize") as error:
        fresh.prepare_source(source, precision="int8")
    assert error.value.code == "invalid_option"


def test_animate_quantize_keeps_int8_only_where_it_pays(tmp_path):
    """Exit 0 and int8 graphs in the cache when int8 is within the bounds and faster here, exit 1
    and none when not (the report says which); a render at --precision int8 follows."""
    checkpoint = small(FOMM / "fomm-small.pth.tar", tmp_path)
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "cli.main", "quantize", "--checkpoint", str(checkpoint)]
    command += ["--calibration", *clips(CALIBRATION), "--held-out", *clips(HELD_OUT), "--frames", "6"]
    command += ["--batch-size", "4", "--cache-dir", str(cache)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert report["psnr_db"] >= MIN_PSNR and report["flow_pixels"] <= MAX_FLOW_PIXELS
    assert set(report["seconds_per_frame"]) == {"fp32", "int8"} and report["calibration_samples"] == 18
    kept = result.returncode == 0
    assert report["kept"] == kept and (kept or "not kept" in result.stderr)
    entries = [p for p in cache.iterdir() if p.name.startswith("fomm-")]
    assert len(entries) == 1 and (entries[0] / INT8).is_dir() == kept
    renderer = Animator(load_checkpoint(checkpoint), runtime="openvino", cache_dir=cache)
    source, driving = clip_jobs(clips(HELD_OUT[:1]), (64, 64), 4)[0]
    if kept:
        state = renderer.prepare_source(source, precision="int8")
        assert renderer.animate_batch(state, driving).shape == driving.shape
    else:
        with pytest.raises(RenderError, match="animate quantize"):
            renderer.prepare_source(source, precision="int8")


def test_animate_quantize_refuses_bad_input_with_one_line(tmp_path):
    checkpoint = need_shared(FOMM / "fomm-small.pth.tar")
    command = [sys.executable, "-m", "cli.main", "quantize", "--checkpoint", str(checkpoint)]
    command += ["--calibration", str(tmp_path / "missing.mp4"), "--held-out", *clips(HELD_OUT)]
    command += ["--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
