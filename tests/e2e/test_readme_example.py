"""The README's curl example, as written, against a real service: after `make demo` it downloads a
result, and a refused request shows its error instead of a traceback.

The example is read from README.md; only its `make serve &` line is replaced by this test's own
service (the bundled starter model) and its address by that service's. It runs in a folder where
the demo's media were made as `make demo` makes them.
"""

import re
import subprocess
from pathlib import Path

import pytest

from engine.media.video_io import probe_video
from service import demo
from tests.service_stack import ROOT, ServiceStack

SERVE_LINE = re.compile(r"^make serve &.*$", re.MULTILINE)
API_LINE = re.compile(r"^API=http://127\.0\.0\.1:8000$", re.MULTILINE)


def readme_example() -> str:
    """The shell block under "### API in one example"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### API in one example\n", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.DOTALL)[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    weights = folder / "weights"
    weights.mkdir()
    (weights / "small.pth.tar").symlink_to(ROOT / "weights" / "starter.pth.tar")
    with ServiceStack(folder, weights, BATCH_SIZE="8") as service:
        yield service


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A folder holding what `make demo` leaves: its example media."""
    pytest.importorskip("skimage", reason="the demo extra is not installed: make setup installs it")
    folder = tmp_path_factory.mktemp("clone")
    demo.make_media(folder / demo.media_folder(demo.DEFAULT_OUT))
    return folder


def _run(script: str, stack: ServiceStack, cwd: Path) -> subprocess.CompletedProcess:
    assert SERVE_LINE.search(script) and API_LINE.search(script), script
    script = API_LINE.sub(f"API={stack.url}", SERVE_LINE.sub("", script))
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_the_example_names_what_make_demo_leaves():
    example = readme_example()
    folder = demo.media_folder(demo.DEFAULT_OUT)
    assert f"source=@{folder}/source.png" in example and f"driving=@{folder}/driving.mp4" in example
    assert "curl -s " not in example, "-s alone hides a refused request's error"


def test_the_readme_example_downloads_a_result(stack, clone):
    done = _run(readme_example(), stack, clone)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"status":"succeeded"' in done.stdout and done.stderr == ""
    info = probe_video(clone / "out.mp4")
    assert (info.frames, info.fps, info.has_audio) == (100, 25.0, True)


def test_a_refused_request_shows_its_error(stack, clone):
    """A video sent as the photo: the 415 and its message are printed, no traceback, no download."""
    wrong = readme_example().replace("source=@out/demo/source.png", "source=@out/demo/driving.mp4")
    (clone / "out.mp4").unlink(missing_ok=True)
    done = _run(wrong, stack, clone)
    assert done.returncode != 0
    assert '"code":"unsupported_media_type"' in done.stdout
    assert "The requested URL returned error: 415" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (clone / "out.mp4").exists()
