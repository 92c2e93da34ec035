"""The `animate` command's refusals (issue 26, class 13), run as a process: every one is one line on
stderr and exit 2, nothing of torch's own on stderr, and no input is ever written over."""

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.hostile_media import gradient, image_bytes, make_clip
from tests.service_stack import ROOT

pytestmark = pytest.mark.slow


def _animate(*args: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cli.main", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """The one line of a refusal (exit 2), which says `words`."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("animate: error: ") and all(word in lines[0] for word in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "photo.png").write_bytes(image_bytes(gradient(64, 64), "PNG"))
    make_clip(folder / "talk.mp4", 0.5, 64, 10)
    return folder


def stride_zero_checkpoint(path: Path, small_checkpoint: Path, widen: int = 120) -> Path:
    """The small model's layout with every width times `widen`, each tensor one stored zero seen
    through stride 0: a 50 KB file whose tensors claim 2.2e9 parameters."""
    from engine import load_checkpoint
    from engine.families.fomm.checkpoint import build_model

    model = load_checkpoint(small_checkpoint)
    config = copy.deepcopy(model.config)
    generator = config["generator_params"]
    for part in (config["kp_detector_params"], generator, generator["dense_motion_params"]):
        part["block_expansion"] *= widen
        part["max_features"] *= widen
    with torch.device("meta"):
        wide = build_model(config)
    stored = {name: module.state_dict() for name, module in model.named_children()}
    data = {}
    for name, module in wide.named_children():
        data[name] = {}
        for key, claimed in module.state_dict().items():
            real = stored[name].get(key)
            same = real is not None and real.shape == claimed.shape
            data[name][key] = real if same else torch.zeros((), dtype=claimed.dtype).expand(claimed.shape)
    torch.save(data, path)
    return path


def test_a_checkpoint_whose_tensors_lie_about_their_storage_is_refused(small_checkpoint, inputs, tmp_path):
    """render printed a 35-line traceback; inspect exited 0 reporting 2.2e9 parameters."""
    lying = stride_zero_checkpoint(tmp_path / "lying.pth.tar", small_checkpoint)
    assert lying.stat().st_size < 100_000
    _refused(_animate("inspect", lying), "does not store")
    out = tmp_path / "out.mp4"
    render = ("render", "--source", inputs / "photo.png", "--driving", inputs / "talk.mp4", "--crop", "none")
    _refused(_animate(*render, "--checkpoint", lying, "--out", out), "does not store")
    assert not out.exists() and list(tmp_path.iterdir()) == [lying]


def test_a_pickle_with_code_is_refused_in_one_line_and_never_run(tmp_path):
    """A pickle (protocol 5) that would run a command: refused, plus 3 lines of torch's warning."""
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    bad = tmp_path / "bad.pth"
    bad.write_bytes(pickle.dumps({"kp_detector": Payload()}, protocol=5))
    line = _refused(_animate("inspect", bad), "bad.pth")
    assert "weights_only` set to `False`" not in line, "never advise loading it unsafely"
    assert not ran.exists()


@pytest.mark.parametrize("link", ["same name", "symbolic link", "hard link"])
@pytest.mark.parametrize("role", ["--source", "--driving"])
def test_render_never_writes_over_an_input(small_checkpoint, inputs, tmp_path, link, role):
    """`render --out photo.jpg --source photo.jpg` wrote over the photo."""
    photo, clip = tmp_path / "photo.png", tmp_path / "talk.mp4"
    photo.write_bytes((inputs / "photo.png").read_bytes())
    clip.write_bytes((inputs / "talk.mp4").read_bytes())
    target = photo if role == "--source" else clip
    out = {"same name": target, "symbolic link": tmp_path / "out.mp4", "hard link": tmp_path / "out.mp4"}[
        link
    ]
    if link == "symbolic link":
        out.symlink_to(target)
    elif link == "hard link":
        os.link(target, out)
    before = {path: path.read_bytes() for path in (photo, clip)}
    done = _animate(
        "render", "--source", photo, "--driving", clip, "--checkpoint", small_checkpoint,
        "--out", out, "--crop", "none", "--format", "mp4",
    )  # fmt: skip
    _refused(done, role, "written over")
    assert {path: path.read_bytes() for path in (photo, clip)} == before


def test_crop_never_writes_over_its_input(inputs, tmp_path):
    clip = tmp_path / "talk.mp4"
    clip.write_bytes((inputs / "talk.mp4").read_bytes())
    before = clip.read_bytes()
    _refused(_animate("crop", "--in", clip, "--out", clip), "--in", "written over")
    assert clip.read_bytes() == before


@pytest.mark.parametrize("target", ["an empty folder", "a file", "nothing"])
def test_export_refuses_a_symbolic_link_with_a_reason(small_checkpoint, tmp_path, target):
    """`export --out` on a symbolic link to an empty folder ended in a NotADirectoryError traceback."""
    pointed = tmp_path / "pointed"
    if target == "an empty folder":
        pointed.mkdir()
    elif target == "a file":
        pointed.write_text("keep me")
    link = tmp_path / "export"
    link.symlink_to(pointed)
    done = _animate("export", "--format", "openvino", "--checkpoint", small_checkpoint, "--out", link)
    _refused(done, "symbolic link")
    assert link.is_symlink() and os.readlink(link) == str(pointed)
    if target == "an empty folder":
        assert list(pointed.iterdir()) == []
    elif target == "a file":
        assert pointed.read_text() == "keep me"
