"""RUNTIME=auto: the faster runtime for a model, precision and batch size, measured once, cached with
the model, reported by the worker's model description (GET /models) and `animate inspect`."""

import json
import subprocess
import sys

import pytest

from engine import load_checkpoint
from engine.animator import Animator
from engine.runtimes import auto
from engine.runtimes.openvino import OpenVinoAdapter
from tests.conftest import FOMM, ROOT, need_shared
from worker.catalog import load_models

pytest.importorskip("openvino", reason="openvino is not installed: pip install 'animate[openvino]'")


@pytest.fixture(scope="module")
def checkpoint():
    return need_shared(FOMM / "fomm-small.pth.tar")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def measured(checkpoint, cache) -> Animator:
    return Animator(load_checkpoint(checkpoint), runtime="auto", cache_dir=cache, batch_size=2)


def test_auto_measures_both_runtimes_and_keeps_the_faster(measured, cache):
    choice = measured.runtime_choice
    assert set(choice.seconds_per_frame) == {"torch", "openvino"}
    assert measured.runtime == auto.pick(choice.seconds_per_frame)
    assert isinstance(measured.adapter, OpenVinoAdapter) == (measured.runtime == "openvino")
    (record,) = (cache / auto.CHOICES).iterdir()
    assert json.loads(record.read_text())["runtime"] == measured.runtime


def test_a_later_process_reads_the_choice_without_measuring(measured, checkpoint, cache, monkeypatch):
    def forbidden(*_):
        raise AssertionError("a cached choice is not measured again")

    monkeypatch.setattr("engine.runtimes.seconds_per_frame", forbidden)
    again = Animator(load_checkpoint(checkpoint), runtime="auto", cache_dir=cache, batch_size=2)
    assert again.runtime == measured.runtime and again.runtime_choice == measured.runtime_choice
    loaded = load_models({"small": checkpoint}, "cpu", "auto", cache, "fp32", 2)
    assert loaded["small"].describe("fp32").runtime == measured.runtime  # what GET /models shows


def test_another_batch_size_or_precision_is_measured_apart(measured, checkpoint, cache):
    other = Animator(load_checkpoint(checkpoint), runtime="auto", cache_dir=cache, batch_size=1)
    assert set(other.runtime_choice.seconds_per_frame) == {"torch", "openvino"}
    assert len(list((cache / auto.CHOICES).iterdir())) == 2
    fp16 = Animator(load_checkpoint(checkpoint), runtime="auto", cache_dir=cache, precision="fp16")
    assert fp16.runtime == "torch" and fp16.runtime_choice.seconds_per_frame == {}


def test_inspect_says_which_runtime_renders_the_model(measured, checkpoint, cache):
    command = [sys.executable, "-m", "cli.main", "inspect", str(checkpoint), "--runtime", "auto"]
    command += ["--precision", "fp32", "--batch-size", "2", "--cache-dir", str(cache)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    runtime = json.loads(result.stdout)["runtime"]
    assert runtime["runtime"] == measured.runtime and runtime["batch_size"] == 2
    assert set(runtime["seconds_per_frame"]) == {"torch", "openvino"}


def test_a_choice_made_by_another_version_of_the_engine_is_measured_again(
    measured, checkpoint, cache, monkeypatch
):
    import engine.runtimes

    measuring = engine.runtimes.seconds_per_frame
    timed = []
    monkeypatch.setattr("engine.runtimes.seconds_per_frame", lambda *a: timed.append(a) or measuring(*a))
    before = set((cache / auto.CHOICES).iterdir())
    monkeypatch.setattr(auto, "CHOICE_VERSION", auto.CHOICE_VERSION + 1)
    Animator(load_checkpoint(checkpoint), runtime="auto", cache_dir=cache, batch_size=2)
    assert len(timed) == 2, "both runtimes measured again, not the old choice read"
    assert len(set((cache / auto.CHOICES).iterdir()) - before) == 1


@pytest.mark.parametrize(
    ("openvino", "torch", "kept"),
    [(1.014, 1.097, "torch"), (0.4229, 0.4243, "torch"), (0.80, 1.00, "openvino"), (1.2, 1.0, "torch")],
)
def test_openvino_is_kept_only_when_clearly_faster(openvino, torch, kept):
    """Within the noise of a short measurement, torch's cheaper start wins (the first two: measured
    choices that then lost the whole-process race)."""
    assert auto.pick({"openvino": openvino, "torch": torch}) == kept
