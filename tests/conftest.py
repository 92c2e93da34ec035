"""Shared fixtures. Real media and reference outputs come from ../shared and are never copied in."""

import os
from pathlib import Path

import pytest

# `animate render` runs torch in the tests unless one asks otherwise (RUNTIME is its --runtime's
# default): auto would convert each fixture for OpenVINO and time both runtimes on its first run.
os.environ.setdefault("RUNTIME", "torch")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FOMM = SHARED / "fomm"
TPSMM = SHARED / "tpsmm"
MEDIA = SHARED / "media"


TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items) -> None:
    """Each test carries its tier's marker (its folder's name), so `-m "not e2e"` selects by tier."""
    for item in items:
        if not item.path.is_relative_to(ROOT / "tests"):
            continue  # a test file written elsewhere by a test of this conftest
        tier = next((part for part in item.path.relative_to(ROOT / "tests").parts if part in TIERS), None)
        if tier is not None:
            item.add_marker(tier)


def pytest_runtest_setup(item) -> None:
    """Tests marked native_bf16 check what a CPU with native bf16 runs (the default precision there):
    elsewhere bf16 is emulated or run in float32, so they skip, saying so."""
    if item.get_closest_marker("native_bf16") is None:
        return
    from engine.hardware import cpu_model, native_bf16

    if not native_bf16():
        pytest.skip(f"this CPU ({cpu_model()}) has no native bf16 (AVX-512 BF16 or AMX): bf16 is emulated")


def pytest_terminal_summary(terminalreporter) -> None:
    """One line at the end of the run: how many tests skipped for want of ../shared, and why."""
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if _needed_shared(report)]
    if not skipped:
        return
    why = "is absent" if not SHARED.is_dir() else "lacks the files they need"
    terminalreporter.write_line(
        f"{len(skipped)} skipped because ../shared ({SHARED}) {why}: the fixtures and real media "
        "(checkpoints, reference outputs, clips, portraits) the tests compare against; see README.md"
    )


def _needed_shared(report) -> bool:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return str(SHARED) in reason


def need_shared(path: Path) -> Path:
    """Skip the calling test, saying why, when a file from ../shared is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared fixtures next to the project")
    return path


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """The published-layout small checkpoint re-saved in our format with its 64x64 frame size."""
    from engine import load_checkpoint, save_checkpoint

    model = load_checkpoint(need_shared(FOMM / "fomm-small.pth.tar"))
    model.frame_shape = (64, 64)
    path = tmp_path_factory.mktemp("weights") / "small.pth.tar"
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="session")
def clip() -> Path:
    """A real talking-head clip with audio (d3: 512x512, 30 fps, 11.8 s)."""
    return need_shared(MEDIA / "clips" / "d3.mp4")


@pytest.fixture(scope="session")
def portrait() -> Path:
    images = sorted((MEDIA / "images").glob("*.jpg")) if MEDIA.exists() else []
    if not images:
        pytest.skip(f"{MEDIA / 'images'} is absent: this test needs the shared portraits")
    return images[0]
