"""TPSMM models served beside FOMM ones: over HTTP (queued jobs) and in live mode, one stack."""

import shutil

import pytest

from engine.media.video_io import probe_video
from tests.conftest import TPSMM, need_shared
from tests.live_stack import LiveStack, Received, driving_jpegs, receive_until
from tests.service_stack import cut_clip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights(tmp_path_factory, small_checkpoint):
    """The small FOMM model ("small") and the small TPSMM model with a background predictor ("tps")."""
    from engine import load_checkpoint, save_checkpoint

    folder = tmp_path_factory.mktemp("mixed-weights")
    shutil.copy(small_checkpoint, folder / "small.pth.tar")
    model = load_checkpoint(need_shared(TPSMM / "tpsmm-small.pth.tar"))
    model.frame_shape = (64, 64)
    save_checkpoint(folder / "tps.pth.tar", model)
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory, weights):
    with LiveStack(
        tmp_path_factory.mktemp("tpsmm-service"),
        weights,
        render_worker=True,
        LIVE_TARGET_FPS="1",  # admission by speed is tested in test_live.py
    ) as service:
        yield service


def test_models_lists_both_families_with_their_modes(stack):
    models = {m["name"]: m for m in stack.http.get("/models").json()["models"]}
    assert models["small"]["family"] == "fomm" and models["small"]["modes"] == ["relative", "absolute"]
    assert not models["small"]["background_motion"]
    assert models["tps"]["family"] == "tpsmm" and models["tps"]["background_motion"]
    assert {"relative", "absolute"} <= set(models["tps"]["modes"]) and models["tps"]["modes"][0] == "relative"


def test_a_tpsmm_job_runs_end_to_end(stack, portrait, clip, tmp_path):
    short = cut_clip(clip, tmp_path / "short.mp4", "-t", "0.5", "-vf", "scale=96:96")
    for fields in ({"mode": "relative"}, {"mode": "absolute", "background_motion": "true"}):
        answer = stack.post(portrait, short, model="tps", crop="none", **fields)
        assert answer.status_code == 202, answer.text
        job = stack.wait_finished(answer.json()["id"], timeout=240)
        assert job["status"] == "succeeded", job
        assert job["inputs"]["options"]["mode"] == fields["mode"]
        video = stack.http.get(f"/jobs/{job['id']}/result")
        out = tmp_path / f"{job['id']}.mp4"
        out.write_bytes(video.content)
        assert probe_video(out).frames == probe_video(short).frames


def test_a_mode_the_model_cannot_render_is_refused_naming_the_field(stack, portrait, clip, tmp_path):
    short = cut_clip(clip, tmp_path / "short.mp4", "-t", "0.2", "-vf", "scale=64:64")
    for fields, field, code in (
        ({"mode": "avd"}, "mode", "unsupported_mode"),
        ({"background_motion": "true"}, "background_motion", "unsupported_option"),
    ):
        answer = stack.post(portrait, short, model="small", **fields)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"] == field and answer.json()["error"]["code"] == code


def test_a_live_session_animates_with_a_tpsmm_model(stack, portrait, clip, tmp_path):
    frames = driving_jpegs(clip, tmp_path, seconds=0.5)
    with stack.connect(model="tps") as ws:
        ws.send(portrait.read_bytes())
        ready = receive_until(ws, Received(), lambda r: r.of_type("ready")).of_type("ready")[0]
        assert ready == {"type": "ready", "model": "tps", "width": 64, "height": 64}
        got = Received()
        for index, frame in enumerate(frames[:8]):
            ws.send(frame)
            receive_until(ws, got, lambda r, i=index: len(r.answers) > i, timeout=60)
        assert [a.index for a in got.answers] == list(range(8))
        assert all(a.image.shape == (64, 64, 3) for a in got.answers)
