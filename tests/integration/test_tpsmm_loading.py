"""TPSMM checkpoints: every published layout loads and renders, bad files are refused with a reason,
and loading does not read what inference does not use."""

import json
import subprocess
import sys

import torch

from tests.conftest import ROOT, TPSMM, need_shared


def _small_parts() -> dict[str, dict]:
    data = torch.load(need_shared(TPSMM / "tpsmm-small-nobg.pth.tar"), weights_only=True)
    return {k: v for k, v in data.items() if k not in ("optimizer", "epoch")}


MEASURE_LOAD = """
import sys
from engine import load_checkpoint
def status(field):  # this process's memory in bytes: peak (VmHWM) or current (VmRSS) resident size
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024
before = status("VmHWM")
model = load_checkpoint(sys.argv[1])
print(before, status("VmHWM"), status("VmRSS"))
"""


def test_loading_never_reads_the_optimizer_state(tmp_path):
    """A published file is mostly optimizer state; memory-mapped, it is never read, so loading peaks
    at about twice the networks' size (the weights and the pages they are copied from) and keeps
    about their size."""
    parts = _small_parts()
    model_bytes = sum(v.numel() * v.element_size() for state in parts.values() for v in state.values())
    weights = [v for state in parts.values() for v in state.values() if v.is_floating_point()]
    adam = {
        i: {"exp_avg": torch.randn_like(v), "exp_avg_sq": torch.rand_like(v)} for i, v in enumerate(weights)
    }
    path = tmp_path / "with-optimizer.pth.tar"
    torch.save({**parts, "optimizer": {"state": adam, "param_groups": [{"lr": 2e-4}]}, "epoch": 99}, path)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE_LOAD, str(path)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    before, peak, resident = (int(v) for v in out.stdout.split())
    file_bytes = path.stat().st_size
    assert file_bytes > 2.9 * model_bytes
    # Reading the file whole would peak at file + networks, about 4x the networks' size.
    assert peak - before < 2 * model_bytes + 48 * 2**20, (peak - before, model_bytes, file_bytes)
    assert resident - before < 1.4 * model_bytes + 32 * 2**20, (resident - before, model_bytes)


def test_inspect_shows_family_tps_count_modes_and_background_predictor(tmp_path):
    path = need_shared(TPSMM / "tpsmm-small.pth.tar")
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "inspect", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["family"] == "tpsmm" and report["num_tps"] == 3 and report["num_kp"] == 15
    assert report["modes"] == ["relative", "absolute", "avd"] and report["background_predictor"] is True
    assert set(report["parameters"]) == {
        "kp_detector",
        "dense_motion_network",
        "inpainting_network",
        "avd_network",
        "bg_predictor",
    }
    assert report["parameters"]["bg_predictor"] == 11188998  # ResNet-18, 6 input channels, 6 outputs
