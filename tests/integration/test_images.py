"""The Dockerfile's stages as clean virtual environments: each installs the wheel with exactly its
stage's extras (the API stage without torch) and starts its processes and health checks from there.

No Docker engine runs on the development machines, so the images themselves are not built; what
would break them (a missing dependency, an import of the HTTP layer in the worker) breaks here.
"""

import ast
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from contract.queue import live_workers
from service.launcher import EmbeddedRedis, free_port, stop_process, wait_until
from tests.service_stack import clean_env

ROOT = Path(__file__).resolve().parents[2]
HTTP_PACKAGES = {"fastapi", "starlette", "prometheus_client", "uvicorn", "multipart", "python_multipart"}
INSTALL_TIMEOUT = 900


def _stage_extras() -> dict[str, str]:
    """Each stage's `pip install ...whl)[EXTRAS]`, read from the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text()
    found = {}
    for stage in ("api", "worker"):
        block = re.search(rf"^FROM \S+ AS {stage}\n(.*?)(?=^FROM |\Z)", text, re.MULTILINE | re.DOTALL).group(
            1
        )
        found[stage] = re.search(r"animate-\*\.whl\)\[([a-z,]+)\]", block).group(1)
    return found


def _torch_pin() -> str:
    return re.search(r"pip install (torch==\S+)", (ROOT / "Dockerfile").read_text()).group(1)


def _pip(venv: Path, *args: str) -> None:
    """Installs without byte-compiling (most of torch, 18 s a stage, would never run here); what the
    stages import is compiled once, when first imported (`_stage_env`)."""
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile", *args],
        check=True,
        timeout=INSTALL_TIMEOUT,
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*command, "--wheel-dir", str(out), str(ROOT)], check=True, timeout=300)
    return next(out.glob("animate-*.whl"))


def _stage_env(**settings: str) -> dict[str, str]:
    """clean_env, letting the stage's Python write the bytecode it compiles (an environment may
    forbid it, and then every process would compile torch's modules again)."""
    return {k: v for k, v in clean_env(**settings).items() if k != "PYTHONDONTWRITEBYTECODE"}


def _venv(tmp_path_factory, name: str) -> Path:
    venv = tmp_path_factory.mktemp(name) / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)
    return venv


@pytest.fixture(scope="module")
def stage_venvs(tmp_path_factory, wheel) -> dict[str, Path]:
    """Both stages' environments, installed side by side: pip keeps one core busy, and there are two."""
    extras = _stage_extras()
    api, worker = _venv(tmp_path_factory, "api-stage"), _venv(tmp_path_factory, "worker-stage")

    def install_worker() -> None:
        _pip(worker, _torch_pin())
        _pip(worker, f"{wheel}[{extras['worker']}]")

    with ThreadPoolExecutor(max_workers=2) as pool:
        installs = [pool.submit(_pip, api, f"{wheel}[{extras['api']}]"), pool.submit(install_worker)]
        for install in installs:
            install.result()
    return {"api": api, "worker": worker}


@pytest.fixture(scope="module")
def api_venv(stage_venvs) -> Path:
    return stage_venvs["api"]


@pytest.fixture(scope="module")
def worker_venv(stage_venvs) -> Path:
    return stage_venvs["worker"]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def _run(venv: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "python"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _modules_loaded(venv: Path, modules: str, cwd: Path) -> set[str]:
    code = f"import sys, {modules}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = _run(venv, "-c", code, env=_stage_env(), cwd=cwd)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_api_stage_runs_without_torch(api_venv, redis_server, tmp_path):
    loaded = _modules_loaded(api_venv, "service.app", tmp_path)
    assert "torch" not in loaded and "fastapi" in loaded
    missing = _run(api_venv, "-c", "import torch", env=_stage_env(), cwd=tmp_path)
    assert missing.returncode != 0, "torch is not installed in the API stage"

    # The stage's CMD (uvicorn with the connection limits of issue 15), and the plain factory entry point.
    python = str(api_venv / "bin" / "python")
    for command in (
        [python, "-m", "service"],
        [str(api_venv / "bin" / "uvicorn"), "service.app:create_app", "--factory"],
    ):
        port = free_port()
        env = _stage_env(REDIS_URL=redis_server.url, DATA_DIR=str(tmp_path / "data"), PORT=str(port))
        if "uvicorn" in command[0]:
            command += ["--port", str(port)]
        api = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:

            def answers(port: int = port) -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(answers, 60, f"the API stage's {command[-1]}", api)
            healthcheck = (
                f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=4)"
            )
            assert _run(api_venv, "-c", healthcheck, env=env, cwd=tmp_path).returncode == 0
        finally:
            stop_process(api)


@pytest.mark.parametrize("module", ["worker.run", "worker.live"])
def test_worker_stage_runs_without_the_http_layer(
    worker_venv, redis_server, small_checkpoint, tmp_path, module
):
    loaded = _modules_loaded(worker_venv, f"{module}, worker.jobs, cli.main", tmp_path)
    assert "torch" in loaded and not loaded & HTTP_PACKAGES, loaded & HTTP_PACKAGES
    assert _run(worker_venv, "-m", module, "--help", env=_stage_env(), cwd=tmp_path).returncode == 0

    env = _stage_env(
        REDIS_URL=redis_server.url, DATA_DIR=str(tmp_path / "data"), WEIGHTS_DIR=str(small_checkpoint.parent)
    )
    assert _run(worker_venv, "-m", module, "--healthcheck", env=env, cwd=tmp_path).returncode == 1
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [str(worker_venv / "bin" / "python"), "-m", module], env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    try:
        if module == "worker.run":
            client = redis.Redis(port=redis_server.port)
            published = lambda: any(w["name"].endswith(f".{worker.pid}") for w in live_workers(client))  # noqa: E731
            wait_until(published, 120, module, worker)
        else:
            wait_until(
                lambda: (
                    _run(worker_venv, "-m", module, "--healthcheck", env=env, cwd=tmp_path).returncode == 0
                ),
                120,
                module,
                worker,
            )
        assert _run(worker_venv, "-m", module, "--healthcheck", env=env, cwd=tmp_path).returncode == 0
    finally:
        assert stop_process(worker) == 0, (tmp_path / "worker.log").read_text()[-2000:]


def test_worker_never_imports_the_http_layer():
    """Only `animate submit`'s HTTP client may be imported from service/ by the worker's code."""
    for path in sorted((ROOT / "worker").rglob("*.py")) + sorted((ROOT / "contract").rglob("*.py")):
        package = path.relative_to(ROOT).parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in HTTP_PACKAGES, f"{path.relative_to(ROOT)} imports {name}"
                if top == "service":
                    assert package == "worker" and name == "service.client", f"{path} imports {name}"
                if package == "contract":
                    assert top not in ("torch", "worker", "service"), f"{path} imports {name}"
