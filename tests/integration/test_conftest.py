"""The suite's own summary: tests skipped for want of ../shared are counted in one line at the end."""

import subprocess
import sys

from tests.conftest import ROOT, SHARED

NEEDS_SHARED = """
from tests.conftest import SHARED, need_shared


def test_a():
    need_shared(SHARED / "no-such-fixture")


def test_b():
    need_shared(SHARED / "no-such-clip.mp4")


def test_c():
    pass
"""


def test_skips_for_want_of_shared_are_counted_at_the_end(tmp_path):
    (tmp_path / "test_needs_shared.py").write_text(NEEDS_SHARED)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if "because ../shared" in line]
    assert len(lines) == 1, run.stdout
    assert lines[0].startswith(f"2 skipped because ../shared ({SHARED}) ")
    assert "1 passed, 2 skipped" in run.stdout
