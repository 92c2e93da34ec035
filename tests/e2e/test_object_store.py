"""The S3 job store against a real S3 server (`rclone serve s3`): where keys go, the type every object
comes back with, and what an operator meets on a fresh store: no bucket, refused keys, no endpoint."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from contract.settings import Settings
from contract.storage import POSTER, StorageError, new_job_id
from contract.storage.s3 import S3Store
from service.launcher import free_port
from tests.hostile_media import gradient, make_clip
from tests.s3_server import S3Server
from tests.service_stack import ROOT, ServiceStack, clean_env

TYPES = {
    "result.webm": "video/webm",
    "result.gif": "image/gif",
    "result.webp": "image/webp",
    POSTER: "image/jpeg",
    "result.mp4": "video/mp4",
}


@pytest.fixture
def fresh_s3(tmp_path):
    """A store with no bucket yet, as an operator first meets it."""
    with S3Server(tmp_path / "s3", create_bucket=False) as server:
        yield server


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    source = tmp_path / "source.png"
    gradient(96, 96).save(source)
    return source, make_clip(tmp_path / "driving.mp4", seconds=0.5)


def _store(server: S3Server, monkeypatch, tmp_path: Path, url: str) -> S3Store:
    for name, value in server.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return S3Store.from_url(url, Settings(storage_url=url, data_dir=tmp_path / "data"))


def _job_with_files(store: S3Store, inputs: tuple[Path, Path], names: list[str], folder: Path) -> str:
    """A job with its two inputs committed and `names` published (a few bytes each)."""
    job_id = new_job_id()
    staging = store.staging(job_id)
    staged = {}
    for role, path in zip(("source", "driving"), inputs, strict=True):
        staged[role] = staging / f"{role}{path.suffix}"
        staged[role].write_bytes(path.read_bytes())
    store.commit_inputs(job_id, staged)
    for name in names:
        made = folder / f"{job_id}-{name}"
        made.write_bytes(b"not really media, only named like it")
        store.publish(job_id, name, made)
    return job_id


@pytest.mark.parametrize(
    "url, root",
    [("s3://animate/jobs", "jobs"), ("s3://animate/tenant-a/", "tenant-a"), ("s3://animate", "jobs")],
)
def test_a_job_lives_under_the_prefix_once(fresh_s3, monkeypatch, tmp_path, inputs, url, root):
    """compose's STORAGE_URL=s3://animate/jobs puts jobs at jobs/<id>/, not jobs/jobs/<id>/."""
    store = _store(fresh_s3, monkeypatch, tmp_path, url)
    assert store.create() is True
    job_id = _job_with_files(store, inputs, ["result.mp4"], tmp_path)
    assert fresh_s3.objects() == [
        f"{root}/{job_id}/{name}" for name in ("driving.mp4", "result.mp4", "source.png")
    ]
    assert store.job_ids() == [job_id]
    store.check()  # its probe object is removed again and never taken for a job
    assert store.job_ids() == [job_id] and len(fresh_s3.objects()) == 3


def test_every_object_comes_back_with_its_type(fresh_s3, monkeypatch, tmp_path, inputs):
    store = _store(fresh_s3, monkeypatch, tmp_path, "s3://animate/jobs")
    store.create()
    job_id = _job_with_files(store, inputs, list(TYPES), tmp_path)
    wanted = {**TYPES, "source.png": "image/png", "driving.mp4": "video/mp4"}
    for name, media_type in wanted.items():
        head = store.client.head_object(Bucket="animate", Key=f"jobs/{job_id}/{name}")
        assert head["ContentType"] == media_type, name
        answer = httpx.get(store.presigned_url(job_id, name, 60))
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == media_type, name


def test_a_presigned_url_names_the_type_whatever_the_object_says(fresh_s3, monkeypatch, tmp_path, inputs):
    """An object stored before types were set (or by another tool) is still served as what it is."""
    store = _store(fresh_s3, monkeypatch, tmp_path, "s3://animate/jobs")
    store.create()
    job_id = _job_with_files(store, inputs, [], tmp_path)
    key = f"jobs/{job_id}/result.webm"
    store.client.put_object(Bucket="animate", Key=key, Body=b"webm bytes", ContentType="audio/webm")
    assert httpx.get(store.presigned_url(job_id, "result.webm", 60)).headers["content-type"] == "video/webm"


def _storage_command(env: dict[str, str], action: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "contract.storage", action]
    return subprocess.run(command, env=clean_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_fresh_operator_is_told_the_bucket_is_missing_and_how_to_make_it(fresh_s3, tmp_path, inputs):
    stack = ServiceStack(tmp_path / "api", ROOT / "weights", **fresh_s3.env("jobs"))
    try:
        stack.redis.start()
        stack.start_api()  # and no worker: none is needed to accept a job
        ready = stack.http.get("/readyz")
        assert ready.status_code == 503
        error = ready.json()["error"]
        assert error["code"] == "bucket_missing"
        assert "'animate' does not exist" in error["message"]
        assert "python -m contract.storage create-bucket" in error["message"]

        refused = stack.post(*inputs)
        assert refused.status_code == 503 and "Retry-After" not in refused.headers
        assert refused.json()["error"]["code"] == "bucket_missing"
        assert not list((stack.data_dir / "scratch" / "uploads").iterdir()), "the refused upload is removed"

        made = _storage_command(fresh_s3.env("jobs"), "create-bucket")
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip().endswith("created; reachable and writable")
        again = _storage_command(fresh_s3.env("jobs"), "create-bucket")
        assert again.returncode == 0 and "already there" in again.stdout

        ready = stack.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "no_worker", ready.text
        accepted = stack.post(*inputs)
        assert accepted.status_code == 202, accepted.text
        assert f"jobs/{accepted.json()['id']}/source.png" in fresh_s3.objects()
    finally:
        stack.close()


def test_the_api_makes_the_bucket_at_start_when_asked(fresh_s3, tmp_path):
    env = {**fresh_s3.env("jobs", bucket="made-at-start"), "S3_CREATE_BUCKET": "true"}
    stack = ServiceStack(tmp_path / "api", ROOT / "weights", **env)
    try:
        stack.redis.start()
        stack.start_api()
        ready = stack.http.get("/readyz")
        assert ready.json()["error"]["code"] == "no_worker", ready.text
        assert (fresh_s3.root / "made-at-start").is_dir()
    finally:
        stack.close()


def test_the_check_names_refused_keys_and_an_unreachable_endpoint(fresh_s3):
    fresh_s3.create_bucket = True
    (fresh_s3.root / "animate").mkdir()
    fine = _storage_command(fresh_s3.env("jobs"), "check")
    assert fine.returncode == 0 and fine.stdout.strip().endswith(": reachable and writable"), fine.stderr

    wrong_key = _storage_command({**fresh_s3.env("jobs"), "AWS_SECRET_ACCESS_KEY": "not-the-key"}, "check")
    assert wrong_key.returncode == 2 and wrong_key.stdout == ""
    assert "refused the credentials" in wrong_key.stderr and "SignatureDoesNotMatch" in wrong_key.stderr

    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = _storage_command({**fresh_s3.env("jobs"), "AWS_ENDPOINT_URL_S3": nowhere}, "check")
    assert unreachable.returncode == 2
    assert f"the object store at {nowhere} is unreachable" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1


def test_store_errors_say_whether_waiting_can_help(fresh_s3, monkeypatch, tmp_path):
    store = _store(fresh_s3, monkeypatch, tmp_path, "s3://animate/jobs")
    with pytest.raises(StorageError) as missing:
        store.check()
    assert (missing.value.code, missing.value.transient) == ("bucket_missing", False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    unreachable = S3Store.from_url("s3://animate/jobs", Settings(data_dir=tmp_path / "data"))
    with pytest.raises(StorageError) as down:
        unreachable.check()
    assert (down.value.code, down.value.transient) == ("storage_unreachable", True)


def test_a_webm_and_its_poster_reach_the_client_as_what_they_are(fresh_s3, tmp_path, inputs):
    """A real job through the store: the job names the poster's URL, and both downloads (redirected
    to presigned URLs) come back typed."""
    (fresh_s3.root / "animate").mkdir()
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "small.pth.tar").symlink_to(ROOT / "weights" / "starter.pth.tar")
    env = {**fresh_s3.env("jobs"), "RESULT_DELIVERY": "redirect"}
    with ServiceStack(tmp_path / "service", weights, **env) as stack:
        job = stack.post(*inputs, format="webm", poster="true", crop="none")
        assert job.status_code == 202, job.text
        done = stack.wait_finished(job.json()["id"], timeout=120)
        assert done["status"] == "succeeded", done
        assert done["result_url"] == f"/jobs/{done['id']}/result"
        assert done["result"]["poster"] == f"/jobs/{done['id']}/poster"
        for url, media_type in ((done["result_url"], "video/webm"), (done["result"]["poster"], "image/jpeg")):
            redirect = stack.http.get(url)
            assert redirect.status_code == 307, redirect.text
            answer = httpx.get(redirect.headers["location"])
            assert answer.status_code == 200 and answer.headers["content-type"] == media_type, url
            assert answer.content[:4] in (b"\x1aE\xdf\xa3", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb")
