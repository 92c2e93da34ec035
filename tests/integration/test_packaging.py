"""Dockerfile and docker-compose.yml, checked as text: no Docker engine runs on the development machines."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from contract.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in _instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = match.group(2)
            stages[current] = [("FROM", match.group(1))]
        elif current is not None:
            stages[current].append((keyword, rest))
    return stages


def _arg_defaults() -> dict[str, str]:
    found = {}
    for keyword, rest in _instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            found[name] = value
    return found


def _runs(stage: list[tuple[str, str]]) -> str:
    return "\n".join(rest for keyword, rest in stage if keyword == "RUN")


def _makefile_setup() -> str:
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert recipe, "the Makefile's setup recipe"
    return recipe.group(1)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_dockerfile_has_api_and_worker_targets_as_non_root():
    stages = _stages()
    assert {"api", "worker"} <= set(stages)
    for name in ("api", "worker"):
        stage = stages[name]
        users = [rest for keyword, rest in stage if keyword == "USER"]
        assert users and users[-1] not in ("root", "0"), f"{name} runs as a non-root user"
        last_user = max(i for i, (keyword, _) in enumerate(stage) if keyword == "USER")
        assert all(keyword != "RUN" for keyword, _ in stage[last_user:]), (
            f"{name}: nothing runs as root after USER"
        )
        assert any(keyword == "HEALTHCHECK" for keyword, _ in stage), f"{name} has a health check"
        assert any(keyword == "CMD" for keyword, _ in stage)


def test_api_image_has_no_torch_and_worker_is_on_cuda_pytorch():
    stages, args = _stages(), _arg_defaults()
    api_runs = _runs(stages["api"])
    assert "torch" not in api_runs and "[api]" in api_runs
    assert '"-m", "service"' in dict(stages["api"])["CMD"], "the API with its connection limits"

    base = dict(stages["worker"])["FROM"]
    image = args.get(base.strip("${}"), base)
    assert "pytorch" in image and "cuda" in image, image
    assert "worker.run" in dict(stages["worker"])["CMD"]


def test_images_install_like_make_setup():
    setup = _makefile_setup()
    torch_pin = re.search(r"pip install[^\n]*?(torch==\S+)", setup).group(1)
    setup_extras = set(re.search(r"\.\[([a-z,]+)\]", setup).group(1).split(","))
    stages = _stages()
    worker_runs = _runs(stages["worker"])
    assert f"pip install {torch_pin}" in worker_runs, "the worker pins torch as make setup does"
    assert worker_runs.index(torch_pin) < worker_runs.index("[worker]"), "torch first, then the project"
    for name in ("api", "worker"):
        extras = set(re.findall(r"\[([a-z,]+)\]", _runs(stages[name]))[0].split(","))
        assert extras <= setup_extras, f"{name} installs extras make setup knows: {extras}"


def test_compose_services_volumes_and_health_checks(compose):
    services = compose["services"]
    assert {"redis", "minio", "bucket", "api", "worker", "worker-cpu"} <= set(services)
    stage_names = set(_stages())
    for name, service in services.items():
        if service.get("restart") != "no":  # one-shot set-up services end instead of staying healthy
            assert "test" in service.get("healthcheck", {}), f"{name} has a health check"
        if "build" in service:
            assert service["build"]["target"] in stage_names

    redis = services["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "--appendonly yes" in command
    redis_volume = redis["volumes"][0].split(":")
    assert redis_volume[1] == "/data" and redis_volume[0] in compose["volumes"]

    settings = set(Settings.model_fields)
    for name in ("api", "worker", "worker-cpu", "live", "live-cpu"):
        service = services[name]
        env = service["environment"]
        ours = {key.lower() for key in env if not key.startswith("AWS_")}
        assert ours <= settings, f"{name} sets only known settings"
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["STORAGE_URL"].startswith("s3://") and env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
        volumes = [volume.split(":") for volume in service["volumes"]]
        assert all(v[0] not in compose["volumes"] for v in volumes), f"{name} shares no volume: it can scale"
        weights = [v for v in volumes if v[1] == env["WEIGHTS_DIR"]]
        assert weights and weights[0][2:] == ["ro"], f"{name} mounts the weights read-only"
    for name in ("worker", "worker-cpu"):
        assert "container_name" not in services[name] and "ports" not in services[name], "--scale works"


def test_compose_worker_reserves_a_gpu_and_cpu_profile_does_not(compose):
    worker, cpu = compose["services"]["worker"], compose["services"]["worker-cpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    assert worker["environment"]["WORKER_DEVICE"] == "cuda"
    assert cpu["profiles"] == ["cpu"] and cpu["environment"]["WORKER_DEVICE"] == "cpu"
    assert "deploy" not in cpu
    assert shlex.split(" ".join(cpu["healthcheck"]["test"][1:]))[:3] == ["python", "-m", "worker.run"]


def test_precision_defaults_follow_the_device_and_can_be_chosen():
    from pydantic import ValidationError

    from contract.settings import Settings
    from engine.hardware import default_precision, native_bf16

    assert Settings().precision is None  # unset: the worker resolves it for its device
    assert Settings(worker_device="cpu", precision="bf16").precision == "bf16"
    assert default_precision("cuda") == "bf16"
    assert default_precision("cpu") == ("bf16" if native_bf16() else "fp32")
    with pytest.raises(ValidationError):
        Settings(precision="fp8")
