"""The service's configuration: one pydantic-settings class read from the environment.

The API, the workers and `make serve` read the same class, so a variable means the same thing to
all of them.
"""

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.capabilities import MODEL_NAME_PATTERN, Precision, RuntimeChoice

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
CHECKPOINT_SUFFIXES = (".pth.tar", ".pth")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, frozen=True)

    redis_url: str | None = Field(None, description="unset: `make serve` starts a private Redis")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path("data")
    storage_url: str | None = Field(
        None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?$",
        description="s3://BUCKET/PREFIX: jobs' files in an S3-compatible store; unset: the folder DATA_DIR",
    )
    result_delivery: Literal["redirect", "proxy"] = Field(
        "redirect",
        description="with S3: redirect to a presigned URL, or proxy: the API streams the result itself",
    )
    presign_seconds: int = Field(300, ge=10, le=7 * 24 * 3600, description="lifetime of a presigned URL")
    scratch_dir: Path | None = Field(
        None,
        description="this machine's folder for uploads being checked and renders; unset: DATA_DIR/scratch",
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="auto: path-style when AWS_ENDPOINT_URL_S3 is set, else boto3's choice"
    )
    s3_create_bucket: bool = Field(
        False, description="the API creates STORAGE_URL's bucket at start-up when it is missing"
    )
    s3_multipart_mb: float = Field(
        8, ge=1, le=5120, description="files above this go up in multipart uploads"
    )
    weights_dir: Path = Path("weights")
    default_model: str = "starter"
    max_upload_mb: float = Field(100, gt=0, description="whole request body, enforced while it streams in")
    max_source_mb: float = Field(20, gt=0, description="the source image, enforced as it streams in")
    max_driving_mb: float = Field(100, gt=0, description="the driving video, enforced as it streams in")
    max_driving_seconds: float = Field(60, gt=0)
    max_driving_frames: int = Field(3600, gt=0, description="most frames in a driving video")
    max_driving_pixels: int = Field(3840 * 2160, gt=0, description="largest driving frame, width x height")
    max_pixels: int = Field(16_000_000, gt=0, description="largest source image, width x height")
    probe_timeout_seconds: float = Field(
        30, gt=0, description="longest one upload's video probe may take (wall and CPU time)"
    )
    probe_memory_mb: float = Field(256, ge=32, description="memory one video probe may allocate")
    probe_concurrency: int = Field(
        2, ge=1, description="uploads one API process checks at once (image decoded, video probed)"
    )
    upload_deadline_seconds: float = Field(
        600, gt=0, description="longest a request's body may take to arrive; beyond: 408 upload_timeout"
    )
    upload_idle_seconds: float = Field(
        30,
        gt=0,
        description="longest wait for the next bytes of a request's body; beyond: 408 upload_timeout",
    )
    max_connections: int = Field(
        2048, ge=16, description="connections and requests one API process serves at once; beyond: 503"
    )
    request_head_seconds: float = Field(
        10, gt=0, description="longest a request's head may take to arrive; beyond: the connection is closed"
    )
    keep_alive_seconds: float = Field(
        5, gt=0, description="an idle keep-alive connection is closed after this"
    )
    shutdown_timeout_seconds: float = Field(
        10, gt=0, description="on SIGTERM, how long requests in progress may finish before they are cut off"
    )
    result_ttl: int = Field(24 * 3600, ge=1, description="seconds a finished job and its MP4 are kept")
    worker_device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(4, ge=1, le=256)
    precision: Precision | None = Field(
        None,
        description="inference precision; unset: bf16 on cuda and on CPUs with native bf16 (AVX-512 BF16 "
        "or AMX), fp32 on other CPUs (the worker decides: it needs torch); int8: OpenVINO, quantized "
        "graphs made by `animate quantize`",
    )
    runtime: RuntimeChoice = Field(
        "auto",
        description="workers' runtime; auto: the faster of torch and openvino (CPU, with the openvino extra) "
        "for each model, precision and batch size, measured once and cached in MODEL_CACHE_DIR",
    )
    model_cache_dir: Path = Field(
        Path("model-cache"), description="converted models (openvino), by model content, version and shape"
    )
    job_timeout: int = Field(1800, ge=1, description="seconds one render may take before RQ stops it")
    job_retries: int = Field(2, ge=0, description="times a job whose worker died is queued again")
    store_retry_seconds: float = Field(
        30, ge=1, description="a worker retries a store it cannot reach this long, then hands the job back"
    )
    store_outage_seconds: float = Field(
        1800,
        gt=0,
        description="a job waits this long for a store it cannot reach, then fails (storage_unavailable)",
    )
    heartbeat_interval: int = Field(
        10, ge=1, description="seconds between a busy worker's heartbeats; 3 missed: the job is lost"
    )
    maintenance_interval: int = Field(30, ge=1, description="seconds between passes that find lost jobs")
    worker_stop_grace: float = Field(
        25,
        ge=2,
        description="seconds a worker has after SIGTERM to exit: its job finishes if it can, else goes back "
        "to the queue; keep it below the orchestrator's kill timeout",
    )
    max_queued: int = Field(200, ge=1, description="jobs waiting beyond this are refused with 429")
    cleanup_interval: int = Field(300, ge=1, description="seconds between sweeps of expired jobs")
    live_sessions: int = Field(2, ge=1, le=64, description="live sessions one live worker runs at once")
    live_idle_seconds: float = Field(
        30, gt=0, description="a live session without a source, or then a frame, for this long is closed"
    )
    live_target_fps: float = Field(
        15, gt=0, description="a live worker admits only the sessions it can serve at this frame rate"
    )
    api_keys: str = Field(
        "", description="owner:sha256-of-key entries, comma separated; empty: no key needed (the demo)"
    )
    rate_limit: int = Field(60, ge=0, description="submissions a minute per API key; 0: no limit")
    webhook_secret: SecretStr | None = Field(None, description="signs webhooks; unset: webhook_url refused")
    webhook_retries: int = Field(5, ge=0, description="deliveries tried again after the first fails")
    webhook_backoff: float = Field(1.0, gt=0, description="seconds before the first retry, doubled each time")
    webhook_allow_private: bool = Field(
        False, description="allow webhooks to private, loopback and link-local addresses (closed networks)"
    )
    webhook_timeout_seconds: float = Field(
        10, gt=0, description="longest one webhook delivery may take, from connecting to the answer's head"
    )
    webhook_concurrency: int = Field(
        4, ge=1, description="webhook deliveries one tenant may have in flight at once (per API process)"
    )
    log_level: str = Field("INFO", pattern=r"(?i)^(debug|info|warning|error)$")
    log_format: Literal["json", "text"] = "json"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_file_bytes(self) -> dict[str, int]:
        """The per-file limits by form field."""
        mb = 1024 * 1024
        return {"source": int(self.max_source_mb * mb), "driving": int(self.max_driving_mb * mb)}

    @property
    def webhook_key(self) -> str | None:
        """The webhook secret; None when unset or empty (webhooks off)."""
        return (self.webhook_secret.get_secret_value() or None) if self.webhook_secret else None

    @property
    def scratch_path(self) -> Path:
        return self.scratch_dir or self.data_dir / "scratch"

    @property
    def queue_url(self) -> str:
        """The Redis the API and the workers use; the conventional local one when REDIS_URL is unset."""
        return self.redis_url or LOCAL_REDIS_URL

    def checkpoints(self) -> dict[str, Path]:
        """Every *.pth.tar / *.pth file in WEIGHTS_DIR, by model name (the file name without that
        suffix), and every folder there (a model of several files, named by the folder), which the
        worker loads if a model family recognises it."""
        found: dict[str, Path] = {}
        if not self.weights_dir.is_dir():
            return found
        for path in sorted(self.weights_dir.iterdir()):
            suffix = next((s for s in CHECKPOINT_SUFFIXES if path.name.endswith(s)), None)
            if suffix and path.is_file() and len(path.name) > len(suffix):
                found.setdefault(path.name[: -len(suffix)], path)
            elif path.is_dir() and re.fullmatch(MODEL_NAME_PATTERN, path.name):
                found.setdefault(path.name, path)
        return found
