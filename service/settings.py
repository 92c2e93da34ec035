"""The service's configuration: one pydantic-settings class read from the environment.

The API, the worker and `make serve` read the same class, so a variable means the same thing to all
of them.
"""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
CHECKPOINT_SUFFIXES = (".pth.tar", ".pth")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, frozen=True)

    redis_url: str | None = Field(None, description="unset: `make serve` starts a private Redis")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path("data")
    weights_dir: Path = Path("weights")
    default_model: str = "starter"
    max_upload_mb: float = Field(100, gt=0, description="whole request body, enforced while it streams in")
    max_driving_seconds: float = Field(60, gt=0)
    max_pixels: int = Field(16_000_000, gt=0, description="largest source image, width x height")
    result_ttl: int = Field(24 * 3600, ge=1, description="seconds a finished job and its MP4 are kept")
    worker_device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(4, ge=1, le=256)
    job_timeout: int = Field(1800, ge=10, description="seconds one render may take before RQ stops it")
    max_queued: int = Field(200, ge=1, description="jobs waiting beyond this are refused with 429")
    cleanup_interval: int = Field(300, ge=1, description="seconds between sweeps of expired jobs")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def queue_url(self) -> str:
        """The Redis the API and the workers use; the conventional local one when REDIS_URL is unset."""
        return self.redis_url or LOCAL_REDIS_URL

    def checkpoints(self) -> dict[str, Path]:
        """Every *.pth.tar / *.pth in WEIGHTS_DIR, by model name: the file name without that suffix."""
        found: dict[str, Path] = {}
        if not self.weights_dir.is_dir():
            return found
        for path in sorted(self.weights_dir.iterdir()):
            suffix = next((s for s in CHECKPOINT_SUFFIXES if path.name.endswith(s)), None)
            if suffix and path.is_file() and len(path.name) > len(suffix):
                found.setdefault(path.name[: -len(suffix)], path)
        return found
