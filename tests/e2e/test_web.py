"""The web page in headless Chromium (Debian's, driven by Playwright), against the real service.

The camera is Chromium's fake capture device fed from a real clip.
"""

from pathlib import Path

import pytest
from playwright.sync_api import Page

from service.auth import hash_key
from tests.browser import ChromiumMissing, camera_file, chromium_page
from tests.hostile_media import gradient
from tests.live_stack import LiveStack
from tests.service_stack import cut_clip

pytestmark = pytest.mark.slow
KEY = "web-test-key"
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory, small_checkpoint):
    with LiveStack(
        tmp_path_factory.mktemp("web"),
        small_checkpoint.parent,
        render_worker=True,
        API_KEYS=f"tester:{hash_key(KEY)}",
        BATCH_SIZE="2",
        LIVE_TARGET_FPS="1",  # admission by speed is tested in test_live.py
    ) as service:
        yield service


@pytest.fixture(scope="module")
def camera(tmp_path_factory, clip) -> Path:
    return camera_file(clip, tmp_path_factory.mktemp("camera") / "camera.y4m")


@pytest.fixture
def page(tmp_path, camera) -> Page:
    try:
        with chromium_page(tmp_path / "profile", camera) as page:
            yield page
    except ChromiumMissing as exc:
        pytest.fail(str(exc))


def _open_page(page: Page, stack: LiveStack) -> None:
    page.goto(stack.url + "/")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelector('#model').value === 'small'", timeout=TIMEOUT_MS)


def _choose_photo(page: Page, photo: Path, paste_back: bool) -> None:
    """Choose the photo, wait for the page to judge its size, then leave paste-back as asked."""
    page.set_input_files("#upload-source", str(photo))
    page.wait_for_function("document.querySelector('#upload-paste-hint').textContent !== ''")
    page.set_checked("#upload-paste-back", paste_back)


def test_before_a_job_nothing_dead_is_shown_and_paste_back_follows_the_photo(page, stack, portrait, tmp_path):
    _open_page(page, stack)
    for element in ("#job", "#result", "#result-video", "#result-image", "#result-download", "#upload-error"):
        assert not page.is_visible(element), f"{element} is shown before any job"
    assert page.input_value("#upload-crop") == "auto" and not page.is_checked("#upload-paste-back")

    checked = "document.querySelector('#upload-paste-back').checked"
    page.set_input_files("#upload-source", str(portrait))  # 720 px: larger than the model's 64 px frame
    page.wait_for_function(checked)
    assert page.inner_text("#upload-paste-hint") == "the photo (720×720) is larger than the model's 64×64"
    small = tmp_path / "small.png"
    gradient(48, 40).save(small)
    page.set_input_files("#upload-source", str(small))
    page.wait_for_function(f"!{checked}")
    assert not page.is_visible("#upload-paste-hint")

    page.select_option("#upload-crop", "none")  # the whole photo is the frame: nothing to paste into
    assert page.is_disabled("#upload-paste-back") and not page.is_checked("#upload-paste-back")
    page.select_option("#upload-crop", "face")
    page.set_input_files("#upload-source", str(portrait))
    page.wait_for_function(checked)
    page.uncheck("#upload-paste-back")  # the user's choice outlasts another photo
    page.set_input_files("#upload-source", str(small))
    page.set_input_files("#upload-source", str(portrait))
    page.wait_for_function("document.querySelector('#upload-paste-hint').textContent.includes('720')")
    assert not page.is_checked("#upload-paste-back")


def test_upload_flow_ends_with_a_playable_video(page, stack, portrait, clip, tmp_path):
    """With the defaults a 720 px photo gets: its subject found and pasted back into it."""
    driving = cut_clip(clip, tmp_path / "driving.mp4", "-t", "1.5", "-vf", "scale=128:128")
    _open_page(page, stack)
    page.set_input_files("#upload-source", str(portrait))
    page.wait_for_function("document.querySelector('#upload-paste-back').checked")
    page.set_input_files("#upload-driving", str(driving))
    page.click("#upload-submit")
    page.wait_for_function(
        "document.querySelector('#result-video').readyState >= 2"
        " || !document.querySelector('#upload-error').hidden",
        timeout=TIMEOUT_MS,
    )
    assert page.inner_text("#upload-error") == ""
    assert page.inner_text("#job-status") == "succeeded"
    video = page.evaluate(
        "(() => { const v = document.querySelector('#result-video');"
        " return {duration: v.duration, width: v.videoWidth, height: v.videoHeight}; })()"
    )
    assert video["width"] == 720 and video["height"] == 720, "the photo's own size: pasted back"
    assert abs(video["duration"] - 1.5) < 0.2
    page.evaluate("document.querySelector('#result-video').play()")
    page.wait_for_function("document.querySelector('#result-video').currentTime > 0.3", timeout=TIMEOUT_MS)
    download = page.get_attribute("#result-download", "href")
    assert download.startswith("blob:") and page.get_attribute("#result-download", "download").endswith(
        ".mp4"
    )


@pytest.mark.parametrize("fmt, loop", [("webm", False), ("gif", False), ("webp", True)])
def test_the_page_shows_every_format(page, stack, portrait, clip, tmp_path, fmt, loop):
    """WebM plays in the video element; GIF and animated WebP (for mail and marketplaces) in an image."""
    driving = cut_clip(clip, tmp_path / "driving.mp4", "-t", "0.6", "-vf", "scale=128:128")
    _open_page(page, stack)
    _choose_photo(page, portrait, paste_back=False)
    page.set_input_files("#upload-driving", str(driving))
    page.select_option("#upload-format", fmt)
    if loop:
        page.check("#upload-loop")
    page.click("#upload-submit")
    shown = "#result-video" if fmt == "webm" else "#result-image"
    element = f"document.querySelector('{shown}')"
    ready = (
        f"{element}.readyState >= 2" if fmt == "webm" else f"{element}.complete && {element}.naturalWidth > 0"
    )
    page.wait_for_function(
        f"({ready}) || !document.querySelector('#upload-error').hidden", timeout=TIMEOUT_MS
    )
    assert page.inner_text("#upload-error") == ""
    assert page.is_visible(shown)
    if fmt == "webm":
        size = page.evaluate(f"[{element}.videoWidth, {element}.videoHeight]")
        page.evaluate(f"{element}.play()")
        page.wait_for_function(f"{element}.currentTime > 0.1", timeout=TIMEOUT_MS)
    else:
        size = page.evaluate(f"[{element}.naturalWidth, {element}.naturalHeight]")
    assert size == [64, 64]
    assert page.get_attribute("#result-download", "download").endswith(f".{fmt}")


def test_live_tab_shows_animated_frames(page, stack, portrait):
    _open_page(page, stack)
    page.click("#tab-live")
    assert page.is_visible("#panel-live") and not page.is_visible("#panel-upload")
    page.set_input_files("#live-source", str(portrait))
    page.click("#live-start")
    page.wait_for_function(
        "Number(document.querySelector('#live-frames').textContent) >= 5", timeout=TIMEOUT_MS
    )
    assert page.inner_text("#live-error") == ""
    camera = page.evaluate("document.querySelector('#live-camera').videoWidth")
    assert camera == 320, "the fake camera's clip plays beside the animation"
    assert int(page.inner_text("#live-fps-out")) > 0 and page.inner_text("#live-latency") != "–"
    pixels = page.evaluate(
        "(() => { const c = document.querySelector('#live-output');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i + 1]);"
        " hi = Math.max(hi, d[i + 1]); } return hi - lo; })()"
    )
    assert pixels > 20, "the animated photo is drawn on the canvas"
    page.click("#live-stop")
    stack.wait_idle()
