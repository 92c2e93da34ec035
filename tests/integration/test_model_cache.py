"""The OpenVINO model cache (issue 26, class 12) with real conversions: private, its owner checked,
its files checked against the digests recorded when they were written; a tampered model is never run.
"""

import json
import logging
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.animator import Animator
from engine.errors import RenderError
from engine.runtimes.openvino import ALIASES
from tests.conftest import FOMM
from tests.integration.test_export import TOLERANCE, golden_frames, small_model

pytestmark = pytest.mark.slow
CONST = re.compile(r'<data element_type="f32" shape="([\d, ]+)" offset="(\d+)" size="(\d+)"')


@pytest.fixture(scope="module")
def frames() -> tuple[torch.Tensor, torch.Tensor]:
    return golden_frames(FOMM / "fomm-small.npz")


@pytest.fixture(scope="module")
def reference(frames) -> torch.Tensor:
    renderer = Animator(small_model())
    source, driving = frames
    return renderer.animate_batch(renderer.prepare_source(source), driving[:2])


def _openvino(cache: Path) -> Animator:
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'animate[openvino]'")
    return Animator(small_model(), runtime="openvino", cache_dir=cache)


def _prediction(renderer: Animator, frames) -> torch.Tensor:
    source, driving = frames
    return renderer.animate_batch(renderer.prepare_source(source), driving[:2])


def _negate_kernels(folder: Path) -> int:
    """Every convolution kernel (a 4-D float32 constant) of every graph in `folder` negated in its
    .bin, as an attacker who could write the cache would; returns how many."""
    negated = 0
    for xml in folder.glob("*.xml"):
        weights = np.fromfile(xml.with_suffix(".bin"), np.uint8)
        kernels = {  # constants may share their bytes: each range once
            (int(offset), int(offset) + int(size))
            for shape, offset, size in CONST.findall(xml.read_text())
            if len(dims := [int(d) for d in shape.split(",")]) == 4 and min(dims[:2]) > 1
        }
        for start, end in kernels:
            weights[start:end] = (-weights[start:end].view(np.float32)).view(np.uint8)
        weights.tofile(xml.with_suffix(".bin"))
        negated += len(kernels)
    return negated


def test_a_tampered_cached_model_is_converted_again_not_run(tmp_path, frames, reference, caplog):
    cache = tmp_path / "cache"
    first = _openvino(cache)
    folder = first.adapter.graphs.folder
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert sorted(json.loads((folder / "digests.json").read_text())) == sorted(
        p.name for p in folder.iterdir() if p.suffix in (".xml", ".bin") or p.name == "manifest.json"
    )
    assert (_prediction(first, frames) - reference).abs().max() < TOLERANCE
    assert _negate_kernels(folder) > 10

    with caplog.at_level(logging.WARNING, logger="worker"):
        again = _openvino(cache)
    assert not again.adapter.graphs.cache_hit, "the tampered entry was used"
    assert any(
        "changed since its conversion" in r.getMessage() and "converted again" in r.getMessage()
        for r in caplog.records
    )
    assert (_prediction(again, frames) - reference).abs().max() < TOLERANCE
    assert _openvino(cache).adapter.graphs.cache_hit, "the entry converted again is trusted again"


def test_a_tampered_compiled_blob_is_removed(tmp_path, frames, reference, caplog):
    cache = tmp_path / "cache"
    renderer = _openvino(cache)
    _prediction(renderer, frames)  # compiles the graphs: OpenVINO writes their blobs
    blobs = sorted((renderer.adapter.graphs.folder / "compiled").iterdir())
    recorded = json.loads((renderer.adapter.graphs.folder / "compiled.json").read_text())
    assert blobs and sorted(recorded) == [blob.name for blob in blobs]
    data = bytearray(blobs[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    blobs[0].write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="worker"):
        again = _openvino(cache)
    assert again.adapter.graphs.cache_hit and not blobs[0].exists()
    assert any("does not match its record" in record.getMessage() for record in caplog.records)
    assert (_prediction(again, frames) - reference).abs().max() < TOLERANCE


def test_a_cache_others_could_write_to_is_emptied_and_made_private(tmp_path, caplog):
    cache = tmp_path / "shared-cache"
    planted = cache / "fomm-0123456789abcdef0123"
    planted.mkdir(parents=True)
    (planted / "manifest.json").write_text("{}")
    cache.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="worker"):
        renderer = _openvino(cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    ours = {renderer.adapter.graphs.folder.name, ALIASES}  # the entry converted now, its file's alias
    assert not planted.exists() and {p.name for p in cache.iterdir()} == ours
    assert any("writable by others" in record.getMessage() for record in caplog.records)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_cache_that_belongs_to_another_user_is_refused(tmp_path):
    cache = tmp_path / "theirs"
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    with pytest.raises(RenderError, match="belongs to user 65534"):
        _openvino(cache)
