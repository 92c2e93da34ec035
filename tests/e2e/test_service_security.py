"""API keys, job ownership, rate limits, idempotency, signed webhooks, metrics and logs, end to end:
a real Redis, a worker, uvicorn over HTTP, and a real local HTTP server receiving the webhooks."""

import base64
import hashlib
import hmac
import http.server
import io
import json
import secrets
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from PIL import PngImagePlugin
from prometheus_client.parser import text_string_to_metric_families

from service.auth import hash_key
from service.webhooks import WebhookRefused, pinned_request, resolve
from tests.hostile_media import gradient, make_clip
from tests.service_stack import ROOT, ServiceStack, clean_env

pytestmark = pytest.mark.slow
KEYS = {owner: secrets.token_urlsafe(32) for owner in ("alice", "bob", "carol")}
WEBHOOK_KEY = secrets.token_bytes(24)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
RATE_LIMIT = 20
MARKER = "upload-content-marker-" + secrets.token_hex(8)  # hidden in the uploaded image


@pytest.fixture(scope="module")
def stack(tmp_path_factory, small_checkpoint):
    with ServiceStack(
        tmp_path_factory.mktemp("security"),
        small_checkpoint.parent,
        API_KEYS=",".join(f"{owner}:{hash_key(key)}" for owner, key in KEYS.items()),
        RATE_LIMIT=str(RATE_LIMIT),
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        WEBHOOK_ALLOW_PRIVATE="true",
        WEBHOOK_BACKOFF="0.3",
        WEBHOOK_RETRIES="3",
        BATCH_SIZE="2",
    ) as service:
        yield service


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", MARKER)
    buffer = io.BytesIO()
    gradient(64, 64).save(buffer, "PNG", pnginfo=info)
    (folder / "source.png").write_bytes(buffer.getvalue())
    make_clip(folder / "clip.mp4", 1.0, 64, 10)
    return folder


def bearer(owner: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[owner]}"}


def _post(stack: ServiceStack, media: Path, headers: dict[str, str], **fields: str):
    files = {"source": (media / "source.png").read_bytes(), "driving": (media / "clip.mp4").read_bytes()}
    return stack.http.post("/animate", files=files, data={"crop": "none", **fields}, headers=headers)


def _finished(stack: ServiceStack, job_id: str, headers: dict[str, str]) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = stack.http.get(f"/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_keys_are_required_and_a_job_is_seen_only_by_its_owner(stack, media):
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"X-API-Key": KEYS["alice"] + "x"}):
        refused = _post(stack, media, headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized", headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert stack.http.get("/models", headers=headers).status_code == 401
        assert stack.http.get(f"/jobs/{uuid.uuid4()}", headers=headers).status_code == 401
    assert stack.http.get("/healthz").status_code == 200 and stack.http.get("/metrics").status_code == 200

    job = _post(stack, media, bearer("alice"))
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    bob = {"X-API-Key": KEYS["bob"]}
    for method, path in (("GET", ""), ("GET", "/result"), ("DELETE", "")):
        other = stack.http.request(method, f"/jobs/{job_id}{path}", headers=bob)
        assert other.status_code == 404 and other.json()["error"]["code"] == "job_not_found", (method, path)
    assert _finished(stack, job_id, bearer("alice"))["status"] == "succeeded"
    assert stack.http.get(f"/jobs/{job_id}/result", headers=bearer("alice")).status_code == 200
    assert stack.http.get(f"/jobs/{job_id}/result", headers={"X-API-Key": KEYS["alice"]}).status_code == 200


def test_each_key_has_its_own_rate_limit(stack, media):
    headers = bearer("carol")
    not_an_image = {"source": b"hello", "driving": b"world"}
    for _ in range(RATE_LIMIT):  # refused uploads count too: the limit protects the API's work
        assert stack.http.post("/animate", files=not_an_image, headers=headers).status_code == 415
    limited = stack.http.post("/animate", files=not_an_image, headers=headers)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert stack.http.post("/animate", files=not_an_image, headers=bearer("bob")).status_code == 415


def test_idempotency_key_returns_the_same_job_and_refuses_another_body(stack, media):
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = _post(stack, media, {**bearer("alice"), **key})
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = _post(stack, media, {**bearer("alice"), **key})  # a new multipart boundary, the same content
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = _post(stack, media, {**bearer("alice"), **key}, mode="absolute")
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    bobs = _post(stack, media, {**bearer("bob"), **key})  # keys are per owner
    assert bobs.status_code == 202 and bobs.json()["id"] != first.json()["id"]
    bad = _post(stack, media, {**bearer("alice"), "Idempotency-Key": "has spaces"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "Idempotency-Key"
    for job, owner in ((first, "alice"), (bobs, "bob")):
        stack.http.delete(f"/jobs/{job.json()['id']}", headers=bearer(owner))
        assert _finished(stack, job.json()["id"], bearer(owner))["status"] in ("canceled", "succeeded")


class Receiver:
    """A local HTTP server taking webhooks; it answers 500 to the first delivery of each job."""

    def __init__(self):
        self.calls: list[tuple[dict[str, str], bytes]] = []
        calls, seen = self.calls, set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                first = self.headers["webhook-id"] not in seen
                seen.add(self.headers["webhook-id"])
                self.send_response(500 if first else 204)
                self.end_headers()

            def log_message(self, *args):
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def deliveries(self, job_id: str, count: int, timeout: float = 60) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [call for call in self.calls if call[0]["webhook-id"] == f"msg_{job_id}"]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(self.calls)} webhook calls, not {count} for {job_id}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.close()


def _verify(headers: dict[str, str], body: bytes) -> None:
    """The receiver's side of Standard Webhooks: HMAC-SHA256 over id.timestamp.body, a recent timestamp."""
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(WEBHOOK_KEY, signed, hashlib.sha256).digest()).decode()
    version, signature = headers["webhook-signature"].split(",", 1)
    assert version == "v1" and hmac.compare_digest(signature, expected)
    assert abs(time.time() - int(headers["webhook-timestamp"])) < 120


def test_webhooks_are_signed_retried_and_carry_the_job(stack, media, receiver):
    job = _post(stack, media, bearer("alice"), webhook_url=receiver.url)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    done = _finished(stack, job_id, bearer("alice"))
    assert done["status"] == "succeeded"
    (first_headers, first_body), (headers, body) = receiver.deliveries(job_id, 2)  # 500, then accepted
    for attempt in ((first_headers, first_body), (headers, body)):
        _verify(*attempt)
    assert first_headers["webhook-id"] == headers["webhook-id"] == f"msg_{job_id}"
    assert first_headers["content-type"] == "application/json"
    assert json.loads(body) == stack.http.get(f"/jobs/{job_id}", headers=bearer("alice")).json()

    tampered = dict(headers, **{"webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)})
    with pytest.raises(AssertionError):
        _verify(tampered, body)

    canceled = _post(stack, media, bearer("bob"), webhook_url=receiver.url, mode="absolute")
    stack.http.delete(f"/jobs/{canceled.json()['id']}", headers=bearer("bob"))
    _, body = receiver.deliveries(canceled.json()["id"], 2)[-1]
    assert json.loads(body)["status"] in ("canceled", "succeeded")


def _metrics(stack: ServiceStack) -> dict[tuple[str, tuple], float]:
    text = stack.http.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_jobs_frames_stages_and_workers(stack, media):
    before = _metrics(stack)
    ok = _post(stack, media, bearer("alice")).json()["id"]
    bad = _post(stack, media, bearer("alice"), driving_start="9999").json()["id"]  # fails in the worker
    assert _finished(stack, ok, bearer("alice"))["status"] == "succeeded"
    failed = _finished(stack, bad, bearer("alice"))
    assert failed["error"]["code"] == "invalid_option"
    after = _metrics(stack)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("animate_jobs_submitted_total") == 2
    assert grew("animate_jobs_succeeded_total") == 1
    assert grew("animate_jobs_failed_total", code="invalid_option") == 1
    assert grew("animate_frames_rendered_total") == 10
    assert grew("animate_stage_seconds_total", stage="inference") > 0
    assert grew("animate_job_duration_seconds_count") == 2
    assert grew("animate_job_duration_seconds_bucket", le="+Inf") == 2
    assert after[("animate_workers_alive", ())] == 1
    assert after[("animate_queue_depth", ())] == 0


def test_logs_are_json_lines_with_job_ids_and_no_secrets(stack, media, receiver):
    job = _post(stack, media, bearer("alice"), webhook_url=receiver.url).json()["id"]
    _finished(stack, job, bearer("alice"))
    receiver.deliveries(job, 2)
    time.sleep(0.5)  # the last lines reach the files
    secrets_seen = [*KEYS.values(), WEBHOOK_SECRET, base64.b64encode(WEBHOOK_KEY).decode(), MARKER]
    secrets_seen += [headers["webhook-signature"].split(",", 1)[1] for headers, _ in receiver.calls]
    for name in ("api.log", "worker.log"):
        text = (stack.folder / name).read_text()
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
        about_job = [entry for entry in entries if entry.get("job_id") == job]
        assert about_job, f"{name} has no line about job {job}"
        for secret in secrets_seen:
            assert secret not in text, f"{name} shows a secret or upload content"


def test_animate_submit_sends_the_key(stack, media, tmp_path):
    command = [sys.executable, "-m", "cli.main", "submit", "--server", stack.url, "--crop", "none"]
    command += ["--source", str(media / "source.png"), "--driving", str(media / "clip.mp4")]
    env = clean_env(ANIMATE_API_KEY=KEYS["bob"])
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "a.mp4")], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0 and (tmp_path / "a.mp4").is_file(), done.stderr
    wrong = [*command, "--out", str(tmp_path / "b.mp4"), "--api-key", "wrong"]
    refused = subprocess.run(wrong, capture_output=True, text=True, env=env, cwd=ROOT)
    assert refused.returncode == 2 and "(unauthorized)" in refused.stderr
    assert not (tmp_path / "b.mp4").exists()


def test_compose_turns_keys_on_and_the_demo_leaves_them_off():
    api = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["environment"]
    assert api["API_KEYS"].startswith("${API_KEYS:?"), "compose refuses to start the API without keys"
    assert 'env["API_KEYS"] = ""' in (ROOT / "service" / "demo.py").read_text()


def test_webhook_delivery_connects_to_the_address_it_checked():
    """The URL is rewritten to the checked IP; Host and the TLS name stay the URL's (no DNS rebinding)."""
    url, headers, extensions = pinned_request("https://hooks.example.com:8443/in?x=1", "93.184.216.34")
    assert url == "https://93.184.216.34:8443/in?x=1"
    assert headers == {"Host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}
    url, headers, extensions = pinned_request("http://hooks.example.com/in", "2606:2800:220:1::1")
    assert url == "http://[2606:2800:220:1::1]/in" and headers == {"Host": "hooks.example.com"}
    assert extensions == {}
    with pytest.raises(WebhookRefused):
        resolve("localhost", 80, allow_private=False)
    assert all(ip in ("127.0.0.1", "::1") for ip in resolve("localhost", 80, allow_private=True))
