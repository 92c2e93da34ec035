"""Hostile uploads against the real API (uvicorn over HTTP, a real Redis, real ffmpeg and Pillow).

No worker runs here: everything is judged before a job is queued, and accepted jobs just wait. The
media are made by the tests (ffmpeg's test pattern, Pillow), so nothing here needs ../shared.
"""

import http.server
import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.settings import Settings
from engine.errors import InvalidImage, InvalidVideo, StorageError
from engine.media.video_io import Mp4Writer, load_image, read_frames
from engine.media.video_io import probe_video as worker_probe
from service.errors import ApiError
from service.media import probe_video
from tests.hostile_media import (
    ffmpeg_bytes,
    gradient,
    image_bytes,
    jpeg_claiming,
    make_clip,
    png_claiming,
)
from tests.service_stack import ServiceStack

pytestmark = pytest.mark.slow
MAX_PIXELS = 1_000_000
LIMITS = {
    "MAX_UPLOAD_MB": "2",
    "MAX_SOURCE_MB": "0.25",
    "MAX_PIXELS": str(MAX_PIXELS),
    "MAX_DRIVING_SECONDS": "3",
    "MAX_DRIVING_FRAMES": "60",
    "MAX_DRIVING_PIXELS": str(100 * 100),
    "WEBHOOK_SECRET": "whsec_" + "c2VjcmV0LWZvci10ZXN0cw==",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """Redis and the API only."""
    folder = tmp_path_factory.mktemp("inputs")
    stack = ServiceStack(folder, folder / "no-weights", **LIMITS)
    try:
        stack.redis.start()
        stack.start_api()
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_clip(folder / "clip.mp4", 1.0)
    (folder / "source.png").write_bytes(image_bytes(gradient(), "PNG"))
    return folder


def _folders(stack: ServiceStack) -> set[str]:
    root = stack.data_dir / "jobs"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def _post(stack: ServiceStack, source: bytes, driving: bytes, **fields: str):
    files = {"source": ("s.png", source), "driving": ("d.mp4", driving)}
    return stack.http.post("/animate", files=files, data=fields)


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _accepted(stack: ServiceStack, response) -> dict:
    """An accepted job, then canceled and deleted so the queue stays empty."""
    assert response.status_code == 202, response.text
    job = response.json()
    assert stack.http.delete(f"/jobs/{job['id']}").json()["status"] == "canceled"
    assert stack.http.delete(f"/jobs/{job['id']}").status_code == 204
    return job


def test_each_file_has_its_own_limit_enforced_while_streaming(api, media):
    before = _folders(api)
    big_source = image_bytes(gradient(), "PNG") + b"\0" * 300_000  # under MAX_UPLOAD_MB, over MAX_SOURCE_MB
    error = _error(_post(api, big_source, (media / "clip.mp4").read_bytes()), 413)
    assert error["code"] == "payload_too_large" and error["field"] == "source"

    head = (
        b"POST /animate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="source"; filename="s.png"\r\n\r\n'
    block = b"\0" * 65536
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        for _ in range(8):  # 512 KiB of a body that never ends: the answer comes anyway
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        answer = b""
        while not answer.endswith(b"}"):  # the head, then the JSON body, in as many packets as it takes
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413") and b'"field":"source"' in answer
    assert _folders(api) == before


def test_decompression_bombs_are_refused_by_their_header(api, media):
    clip = (media / "clip.mp4").read_bytes()
    for bomb in (png_claiming(1100, 1000), png_claiming(60000, 60000), jpeg_claiming(30000, 20000)):
        error = _error(_post(api, bomb, clip), 400)
        assert (error["code"], error["field"]) == ("image_too_large", "source"), error
    # the same kind of file under the limit is decoded, and found truncated
    assert _error(_post(api, png_claiming(900, 1000), clip), 400)["code"] == "invalid_image"


def test_only_png_jpeg_and_webp_images(api, media):
    clip = (media / "clip.mp4").read_bytes()
    image = gradient()
    for fmt in ("GIF", "BMP", "TIFF", "ICO"):
        error = _error(_post(api, image_bytes(image, fmt), clip), 415)
        assert (error["code"], error["field"]) == ("unsupported_media_type", "source"), fmt
    assert _error(_post(api, b"<svg xmlns='http://www.w3.org/2000/svg'/>", clip), 415)["field"] == "source"
    for fmt in ("PNG", "JPEG", "WEBP"):
        job = _accepted(api, _post(api, image_bytes(image, fmt), clip, crop="none"))
        assert job["inputs"]["source"]["format"] == fmt.lower()


def test_truncated_or_corrupt_images_are_invalid(api, media):
    clip = (media / "clip.mp4").read_bytes()
    for fmt in ("PNG", "JPEG", "WEBP"):
        whole = image_bytes(gradient(96, 96), fmt)
        error = _error(_post(api, whole[: len(whole) // 2], clip), 400)
        assert (error["code"], error["field"]) == ("invalid_image", "source"), fmt
    garbage = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    assert _error(_post(api, garbage, clip), 400)["code"] == "invalid_image"


def test_exif_alpha_grayscale_and_cmyk_images_are_accepted(api, media):
    clip = (media / "clip.mp4").read_bytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown turned a quarter clockwise
    turned = _accepted(api, _post(api, image_bytes(gradient(96, 64), "JPEG", exif=exif), clip))
    assert (turned["inputs"]["source"]["width"], turned["inputs"]["source"]["height"]) == (64, 96)
    rgb = gradient()
    images = {
        "RGBA": rgb.convert("RGBA"),
        "LA": rgb.convert("LA"),
        "L": rgb.convert("L"),
        "I;16": Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257),
        "P": rgb.convert("P"),
    }
    for mode, image in images.items():
        _accepted(api, _post(api, image_bytes(image, "PNG"), clip))
        assert Image.open(io.BytesIO(image_bytes(image, "PNG"))).mode == mode
    _accepted(api, _post(api, image_bytes(rgb.convert("CMYK"), "JPEG"), clip))


def test_images_are_turned_flattened_and_converted_for_the_engine(tmp_path):
    rgb = gradient(48, 32)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "turned.jpg").write_bytes(image_bytes(rgb, "JPEG", exif=exif, quality=95))
    turned = load_image(tmp_path / "turned.jpg")
    assert turned.shape == (48, 32, 3)
    # turned clockwise: the source's top-left (red 0, green 0) is now the top-right corner
    assert turned[0, -1, 0] < 40 and turned[0, -1, 1] < 40 and turned[-1, -1, 0] > 200

    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 24:, 3] = 255  # the left half fully transparent
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    flat = load_image(tmp_path / "alpha.png")
    assert (flat[:, :24] == 255).all() and (flat[:, 24:] == [200, 0, 0]).all()

    deep = np.full((32, 48), 40000, np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert (load_image(tmp_path / "deep.png") == 40000 >> 8).all()

    Image.new("CMYK", (48, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in ink
    red = load_image(tmp_path / "cmyk.jpg").astype(int)
    assert red.shape == (32, 48, 3) and red[..., 0].min() > 200 and red[..., 1:].max() < 60

    (tmp_path / "bomb.png").write_bytes(png_claiming(5000, 5000))
    with pytest.raises(InvalidImage) as refused:
        load_image(tmp_path / "bomb.png", max_pixels=1_000_000)
    assert refused.value.code == "image_too_large"


def test_driving_video_limits(api, media, tmp_path):
    source = (media / "source.png").read_bytes()

    def refused(video: Path, code: str) -> str:
        error = _error(_post(api, source, video.read_bytes()), 400)
        assert (error["code"], error["field"]) == (code, "driving"), error
        return error["message"]

    assert "4.0 s" in refused(make_clip(tmp_path / "long.mp4", 4.0), "video_too_long")
    assert "80 frames" in refused(make_clip(tmp_path / "fast.mp4", 2.0, 64, 40), "video_too_long")
    assert "128x128" in refused(make_clip(tmp_path / "big.mp4", 1.0, 128), "video_too_large")
    audio_only = tmp_path / "audio.mp4"
    fragmented = ["-movflags", "frag_keyframe+empty_moov", "-f", "mp4"]
    audio_only.write_bytes(ffmpeg_bytes("-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", *fragmented))
    refused(audio_only, "invalid_video")
    header_only = tmp_path / "header.mp4"
    header_only.write_bytes((media / "clip.mp4").read_bytes()[:32] + b"\0" * 2000)
    refused(header_only, "invalid_video")

    # a live recording (a browser's MediaRecorder, say) has no duration in its header: it is measured
    live = tmp_path / "live.webm"
    args = ["-f", "lavfi", "-i", "testsrc=size=64x64:rate=10", "-t", "1", "-c:v", "libvpx", "-live", "1"]
    live.write_bytes(ffmpeg_bytes(*args, "-f", "webm"))
    job = _accepted(api, _post(api, source, live.read_bytes()))
    assert job["inputs"]["driving"]["duration"] == pytest.approx(1.0, abs=0.15)
    live_long = tmp_path / "live-long.webm"
    live_long.write_bytes(ffmpeg_bytes(*args[:-4], "-t", "4", "-c:v", "libvpx", "-live", "1", "-f", "webm"))
    refused(live_long, "video_too_long")


class _Listener:
    """A local HTTP server that counts the requests reaching it: the network a playlist might reach."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                hits.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _playlists(folder: Path, secret: Path, port: int) -> dict[str, Path]:
    """Files that, opened by ffmpeg by their content, would read `secret` (beside them) or reach the
    listener. With `-protocol_whitelist file` alone, the concat script is decoded as the secret."""
    texts = {
        "hls": f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{secret}\n#EXTINF:2.0,\n"
        f"http://127.0.0.1:{port}/segment.ts\n#EXT-X-ENDLIST\n",
        # ffmpeg's own safe mode refuses absolute paths in a concat script, not relative ones
        "ffconcat": f"ffconcat version 1.0\nfile '{secret.name}'\nfile 'http://127.0.0.1:{port}/x.mp4'\n",
        "m3u": f"{secret}\nhttp://127.0.0.1:{port}/y.mp4\n",
        "sdp": f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video {port} RTP/AVP 96\n",
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = folder / f"{name}.mp4"
        paths[name].write_text(text)
    return paths


def test_playlists_renamed_mp4_are_refused_and_never_followed(api, media, tmp_path):
    secret = make_clip(tmp_path / "secret.mp4", 2.0, 88, 7)  # 88 px, 7 fps: recognisable anywhere
    listener = _Listener()
    try:
        playlists = _playlists(tmp_path, secret, listener.port)
        source = (media / "source.png").read_bytes()
        before = _folders(api)
        for name, path in playlists.items():
            response = _post(api, source, path.read_bytes())
            assert response.status_code == 415 and response.json()["error"]["field"] == "driving", name
            assert "88" not in response.text and "secret" not in response.text

            # behind the sniffing, the probe forces the demuxer: even named as MP4 it is no playlist
            with pytest.raises(ApiError) as probed:
                probe_video(path, "mp4", Settings())
            assert probed.value.code == "invalid_video" and "88" not in probed.value.message

            # and so do the worker's probe, its decoder and its audio input
            with pytest.raises(InvalidVideo):
                worker_probe(path)
            with pytest.raises(InvalidVideo):
                next(iter(read_frames(path, 8, 8)))
            with pytest.raises((InvalidVideo, StorageError)):
                Mp4Writer(tmp_path / "out.mp4", 8, 8, 7, audio_from=path).close()
        assert _folders(api) == before
        assert listener.hits == [] and not (tmp_path / "out.mp4").exists()
    finally:
        listener.close()


def test_malformed_fields_are_422_naming_the_field(api, media):
    source = (media / "source.png").read_bytes()
    clip = (media / "clip.mp4").read_bytes()
    cases = {
        "mode": "sideways",
        "adapt_scale": "perhaps",
        "driving_start": "-3",
        "audio": "loud",
        "crop": "../../etc",
        "paste_back": "2",
        "model": "../weights/x",
        "webhook_url": "ftp://example.com/hook",
    }
    for name, value in cases.items():
        error = _error(_post(api, source, clip, **{name: value}), 422)
        assert error["field"] == name and name in error["message"], (name, error)
    for url in (
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",  # refused by the address it resolves to
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://user:pw@example.com/hook",
        "not a url",
    ):
        error = _error(_post(api, source, clip, webhook_url=url), 422)
        assert error["field"] == "webhook_url", (url, error)
    error = _error(_post(api, source, clip, colour="blue"), 422)
    assert (error["code"], error["field"]) == ("unknown_field", "colour")
    error = _error(
        api.http.post("/animate", files={"source": source, "driving": clip, "mode": ("m", b"x")}), 422
    )
    assert (error["code"], error["field"]) == ("invalid_field", "mode")
    error = _error(api.http.post("/animate", files={"source": source}, data={"driving": "text"}), 422)
    assert error["field"] == "driving"
    error = _error(api.http.post("/animate", files={"source": source}), 422)
    assert (error["code"], error["field"]) == ("missing_field", "driving")


def test_openapi_schema_fuzzed(api):
    """schemathesis generates requests from the OpenAPI schema: no answer is a 500, every answer
    matches the schema (status, content type, body)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi import checks

    def no_internal_error(ctx, response, case) -> None:
        # 503 is documented: readiness with no worker alive, Redis down
        assert response.status_code < 500 or response.status_code == 503, (
            f"{response.status_code} {response.text}"
        )

    conformance = [
        no_internal_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_headers_conformance,
        checks.response_schema_conformance,
    ]  # not "positive data acceptance": a schema-valid upload of random bytes is rightly refused
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy()

        @given(case=strategy)
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.call_and_validate(base_url=api.url, checks=conformance)

        try:
            fuzz()
        except Exception as exc:  # collected to report every operation at once
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
