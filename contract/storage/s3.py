"""The store as an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...), for many machines.

Configured by STORAGE_URL=s3://BUCKET/PREFIX and the standard AWS variables, which boto3 reads
itself: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and, for a store that is not
AWS, AWS_ENDPOINT_URL_S3 (then path-style addressing, which such stores expect, unless
S3_ADDRESSING_STYLE says otherwise). Files above S3_MULTIPART_MB go up as multipart uploads; an
upload that a dead process left incomplete is invisible, and aborted when its job is removed.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from contract.settings import Settings
from contract.storage.base import ROLES, InvalidJobId, JobStore, StorageError, StoredObject, parse_job_id

CHUNK = 1024 * 1024
MISSING = {"404", "NoSuchKey", "NotFound"}


def _failure(exc: Exception) -> StorageError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return StorageError(f"object store: {error.get('Code', '?')} {error.get('Message', '')}".strip())
    return StorageError(f"object store unreachable ({type(exc).__name__})")


class S3Store(JobStore):
    def __init__(self, bucket: str, prefix: str, settings: Settings):
        self.bucket = bucket
        self.prefix = prefix
        self.staging_root = settings.scratch_path / "uploads"
        style = settings.s3_addressing_style
        if style == "auto" and os.environ.get("AWS_ENDPOINT_URL_S3", os.environ.get("AWS_ENDPOINT_URL")):
            style = "path"
        self.client = boto3.client(
            "s3",
            config=Config(
                s3={"addressing_style": style},
                signature_version="s3v4",
                retries={"mode": "standard", "max_attempts": 3},
                # Checksums only where an operation needs one: S3-compatible stores differ in the
                # newer ones, and a whole-object checksum cannot be checked on a ranged read.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        threshold = int(settings.s3_multipart_mb * 1024 * 1024)
        self.transfer = TransferConfig(
            multipart_threshold=threshold, multipart_chunksize=max(threshold, 5 << 20)
        )

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> "S3Store":
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"STORAGE_URL must be s3://BUCKET/PREFIX, not {url!r}")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "", settings)

    def _key(self, job_id: str, name: str = "") -> str:
        return f"{self.prefix}jobs/{parse_job_id(job_id)}/{name}"

    def _objects(self, prefix: str) -> Iterator[dict]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])

    def staging(self, job_id: str) -> Path:
        folder = self.staging_root / parse_job_id(job_id)
        folder.mkdir(parents=True)
        return folder

    def commit_inputs(self, job_id: str, files: dict[str, Path]) -> None:
        try:
            for path in files.values():
                self.client.upload_file(
                    str(path), self.bucket, self._key(job_id, path.name), Config=self.transfer
                )
        except (BotoCoreError, ClientError) as exc:
            raise _failure(exc) from None
        shutil.rmtree(self.staging_root / job_id, ignore_errors=True)

    def fetch_inputs(self, job_id: str, scratch: Path) -> dict[str, Path]:
        found = {}
        try:
            for entry in self._objects(self._key(job_id)):
                name = entry["Key"].rsplit("/", 1)[-1]
                role = name.split(".", 1)[0]
                if role in ROLES and role not in found:
                    found[role] = scratch / name
                    self.client.download_file(
                        self.bucket, entry["Key"], str(found[role]), Config=self.transfer
                    )
        except (BotoCoreError, ClientError) as exc:
            raise _failure(exc) from None
        return found

    def publish(self, job_id: str, name: str, path: Path) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(job_id, name), Config=self.transfer)
        except (BotoCoreError, ClientError) as exc:
            raise _failure(exc) from None
        path.unlink()

    def stat(self, job_id: str, name: str) -> StoredObject | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(job_id, name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING:
                return None
            raise _failure(exc) from None
        except BotoCoreError as exc:
            raise _failure(exc) from None
        return StoredObject(name, int(head["ContentLength"]))

    def read(self, job_id: str, name: str, start: int, end: int) -> Iterator[bytes]:
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=self._key(job_id, name), Range=f"bytes={start}-{end}"
            )["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise _failure(exc) from None
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def presigned_url(self, job_id: str, name: str, seconds: int) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._key(job_id, name)}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)

    def remove(self, job_id: str) -> None:
        prefix = self._key(job_id)
        shutil.rmtree(self.staging_root / job_id, ignore_errors=True)
        try:
            keys = [{"Key": entry["Key"]} for entry in self._objects(prefix)]
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000]})
            self._abort_incomplete_uploads(prefix)
        except (BotoCoreError, ClientError) as exc:
            raise _failure(exc) from None

    def _abort_incomplete_uploads(self, prefix: str) -> None:
        """Multipart uploads a dead process left open: invisible, but stored (and billed) until aborted."""
        try:
            uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix).get("Uploads", [])
        except ClientError as exc:  # some stores answer "none" with an error, or cannot list them at all
            if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "NotImplemented"):
                return
            raise
        for upload in uploads:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )

    def job_ids(self) -> list[str]:
        ids = []
        root = f"{self.prefix}jobs/"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    try:
                        ids.append(parse_job_id(common["Prefix"][len(root) :].rstrip("/")))
                    except InvalidJobId:
                        continue
        except (BotoCoreError, ClientError) as exc:
            raise _failure(exc) from None
        return ids

    def last_change(self, job_id: str) -> float | None:
        try:
            times = [entry["LastModified"].timestamp() for entry in self._objects(self._key(job_id))]
        except (BotoCoreError, ClientError) as exc:
            raise _failure(exc) from None
        return max(times) if times else None
