"""The start-up both worker processes share (`python -m worker.run`, `python -m worker.live`).

Settings, logging, the device check and the models are set up the same way in both, and both keep
a presence key in Redis alive the same way, which the API reads for /readyz and /models and the
container health checks for their host.
"""

import json
import logging
import os
import shutil
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from contract.logs import configure_logging
from contract.queue import PRESENCE_INTERVAL, PRESENCE_TTL
from contract.settings import Settings
from engine.export.openvino_ir import OpenVinoMissing
from worker.catalog import LoadedModel, load_models

log = logging.getLogger("worker")


class StartError(Exception):
    """The process cannot serve: a one-line reason, and exit status 2."""


def process_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


def start(process: str, settings: Settings, batch_size: int) -> dict[str, LoadedModel]:
    """Logging set up, the device and runtime checked and every checkpoint of WEIGHTS_DIR loaded.

    Both kinds of worker run RUNTIME (openvino: converted into MODEL_CACHE_DIR on first use; auto:
    the faster for each model at PRECISION and `batch_size`, measured once into MODEL_CACHE_DIR):
    render workers at BATCH_SIZE, live workers at batch 1.
    """
    configure_logging(process, settings.log_level, settings.log_format)
    if settings.worker_device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise StartError("WORKER_DEVICE=cuda but no CUDA device is available")
    from engine.hardware import default_precision

    precision = settings.precision or default_precision(settings.worker_device)
    runtime = settings.runtime
    if runtime == "openvino" and (settings.worker_device != "cpu" or precision == "fp16"):
        raise StartError("RUNTIME=openvino runs on WORKER_DEVICE=cpu with PRECISION fp32, bf16 or int8")
    if precision == "int8" and (runtime == "torch" or settings.worker_device != "cpu"):
        raise StartError("PRECISION=int8 runs on WORKER_DEVICE=cpu with RUNTIME openvino or auto")
    try:
        models = load_models(
            settings.checkpoints(),
            settings.worker_device,
            runtime,
            settings.model_cache_dir,
            precision,
            batch_size,
        )
    except OpenVinoMissing as exc:
        raise StartError(f"RUNTIME={runtime}: {exc}") from None
    if not models:
        raise StartError(f"no usable checkpoint (*.pth.tar, *.pth) in {settings.weights_dir}")
    return models


def fail(process: str, exc: StartError) -> int:
    print(f"{process}: error: {exc}", file=sys.stderr)
    return 2


def scratch_folder(settings: Settings, name: str) -> Path:
    """This process's scratch folder, emptied; folders of dead processes of this host are removed."""
    root = settings.scratch_path / "workers"
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for entry in root.glob(f"{host}.*"):
        pid = entry.name.rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(entry)
    folder = root / name
    _remove(folder)
    folder.mkdir()
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def wait_for_redis(client: redis.Redis, stopping: threading.Event) -> bool:
    """True once Redis answers; False if asked to stop first."""
    delay = 0.5
    while not stopping.is_set():
        try:
            client.ping()
            return True
        except redis.exceptions.RedisError as exc:
            log.warning("waiting for Redis: %s", exc)
            stopping.wait(delay)
            delay = min(delay * 2, 5.0)
    return False


class Presence(threading.Thread):
    """Keeps `key` (JSON of `describe()`) alive while the process lives; removed when it stops."""

    def __init__(self, client: redis.Redis, key: str, describe: Callable[[], dict[str, Any]]):
        super().__init__(name="presence", daemon=True)
        self.client = client
        self.key = key
        self.describe = describe
        self.done = threading.Event()

    def publish(self) -> None:
        try:
            self.client.set(self.key, json.dumps(self.describe()), ex=PRESENCE_TTL)
        except redis.exceptions.RedisError as exc:
            log.warning("could not publish presence: %s", exc)

    def run(self) -> None:
        while not self.done.wait(PRESENCE_INTERVAL):
            self.publish()

    def stop(self) -> None:
        self.done.set()
        try:
            self.client.delete(self.key)
        except redis.exceptions.RedisError:
            return
