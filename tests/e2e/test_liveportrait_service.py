"""A LivePortrait model (the published folder layout, dropped into WEIGHTS_DIR) served beside a FOMM
one: GET /models, a job with paste-back over HTTP, options refused across families naming the
field, retargeting refused without landmark.onnx, and live sessions admitted by measured speed.

The LivePortrait weights are the shared fixture's random ones (at 64x64 crops, 128x128 out): the
output is noise-like, which is fine for the plumbing these tests check."""

import shutil

import pytest

from engine.media.video_io import load_image, probe_video
from tests.families import liveportrait_at_64
from tests.live_stack import LiveStack, Received, driving_jpegs, receive_until
from tests.service_stack import cut_clip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights(tmp_path_factory, small_checkpoint):
    """The small FOMM model ("small") and the LivePortrait folder ("lp")."""
    folder = tmp_path_factory.mktemp("lp-weights")
    shutil.copy(small_checkpoint, folder / "small.pth.tar")
    shutil.move(liveportrait_at_64(tmp_path_factory.mktemp("lp-made")), folder / "lp")
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory, weights):
    with LiveStack(
        tmp_path_factory.mktemp("lp-service"),
        weights,
        render_worker=True,
        LIVE_TARGET_FPS="1",  # admission by speed: the last test
    ) as service:
        yield service


def test_models_lists_its_modes_options_and_frame_size(stack):
    models = {m["name"]: m for m in stack.http.get("/models").json()["models"]}
    lp = models["lp"]
    assert lp["family"] == "liveportrait" and lp["title"] == "LivePortrait"
    assert lp["modes"] == ["relative", "absolute"] and lp["frame_size"] == [128, 128]
    assert {"region", "stitching", "multiplier"} <= set(lp["options"])
    assert "eye_retargeting" not in lp["options"] and "landmark.onnx" in lp["refusals"]["eye_retargeting"]
    assert models["small"]["family"] == "fomm" and "region" not in models["small"]["options"]


def test_a_liveportrait_job_runs_end_to_end_with_paste_back(stack, portrait, clip, tmp_path):
    short = cut_clip(clip, tmp_path / "short.mp4", "-t", "0.4", "-vf", "scale=128:128")
    answer = stack.post(portrait, short, model="lp", paste_back="true", region="expression", multiplier="1.2")
    assert answer.status_code == 202, answer.text
    job = stack.wait_finished(answer.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    out = tmp_path / "lp.mp4"
    out.write_bytes(stack.http.get(f"/jobs/{job['id']}/result").content)
    info = probe_video(out)
    height, width = load_image(portrait).shape[:2]
    assert info.frames == probe_video(short).frames
    assert (info.width, info.height) == (width - width % 2, height - height % 2)


@pytest.mark.parametrize(
    "model, fields, field",
    [
        ("lp", {"adapt_scale": "false"}, "adapt_scale"),
        ("lp", {"mode": "avd"}, "mode"),
        ("small", {"region": "lips"}, "region"),
        ("small", {"stitching": "false"}, "stitching"),
        ("lp", {"eye_retargeting": "true"}, "eye_retargeting"),
    ],
)
def test_an_option_of_another_family_is_a_422_naming_the_field(
    stack, portrait, clip, tmp_path, model, fields, field
):
    short = cut_clip(clip, tmp_path / "short.mp4", "-t", "0.2", "-vf", "scale=64:64")
    answer = stack.post(portrait, short, model=model, **fields)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and error["code"] in ("unsupported_option", "unsupported_mode")
    if field == "eye_retargeting":
        assert "landmark.onnx" in error["message"]


def test_a_live_session_animates_with_a_liveportrait_model(stack, portrait, clip, tmp_path):
    frames = driving_jpegs(clip, tmp_path, seconds=0.3)
    with stack.connect(model="lp") as ws:
        ws.send(portrait.read_bytes())
        ready = receive_until(ws, Received(), lambda r: r.of_type("ready")).of_type("ready")[0]
        assert ready == {"type": "ready", "model": "lp", "width": 128, "height": 128}
        got = Received()
        for index, frame in enumerate(frames[:4]):
            ws.send(frame)
            receive_until(ws, got, lambda r, i=index: len(r.answers) > i, timeout=60)
        assert [a.index for a in got.answers] == list(range(4))
        assert all(a.image.shape == (128, 128, 3) for a in got.answers)


def test_a_machine_too_slow_for_it_refuses_a_live_session_saying_why(tmp_path_factory, weights, portrait):
    from bench.live import stream

    only_lp = tmp_path_factory.mktemp("lp-only")
    shutil.copytree(weights / "lp", only_lp / "lp")
    with LiveStack(tmp_path_factory.mktemp("lp-refusing"), only_lp, LIVE_TARGET_FPS="100000") as service:
        assert service.live_worker()["capacity"] == 0
        run = stream(f"{service.ws_url}?model=lp", portrait.read_bytes(), [], 25, 1)
    refused = run.summary()["refused"]
    assert refused["status"] == 503 and "cannot serve model 'lp' live at 100000 fps" in refused["message"]
