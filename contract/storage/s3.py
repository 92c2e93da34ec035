"""The store as an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...), for many machines.

Configured by STORAGE_URL=s3://BUCKET/PREFIX and the standard AWS variables, which boto3 reads
itself: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and, for a store that is not
AWS, AWS_ENDPOINT_URL_S3 (then path-style addressing, which such stores expect, unless
S3_ADDRESSING_STYLE says otherwise). A job's files are PREFIX/<id>/... (jobs/<id>/... when the URL
names no prefix), each with its content type. Files above S3_MULTIPART_MB go up as multipart
uploads; an upload that a dead process left incomplete is invisible, and aborted when its job is
removed. The bucket must exist: `python -m contract.storage create-bucket` makes it.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from contract.settings import Settings
from contract.storage.base import (
    ROLES,
    InvalidJobId,
    JobStore,
    StorageError,
    StoredObject,
    StoreMisconfigured,
    content_type,
    parse_job_id,
)

CHUNK = 1024 * 1024
DEFAULT_PREFIX = "jobs"
MISSING = {"404", "NoSuchKey", "NotFound"}
# What S3 and compatible stores answer to credentials they do not accept or that lack a permission.
DENIED = {
    "403",
    "AccessDenied",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
}
BOTO_ERRORS = (BotoCoreError, ClientError, Boto3Error)
READY_OBJECT = ".ready"  # written and removed by check(); not a job id, so never taken for a job


def _client(settings: Settings, connect_timeout: float, read_timeout: float, attempts: int):
    style = settings.s3_addressing_style
    if style == "auto" and os.environ.get("AWS_ENDPOINT_URL_S3", os.environ.get("AWS_ENDPOINT_URL")):
        style = "path"
    return boto3.client(
        "s3",
        config=Config(
            s3={"addressing_style": style},
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": attempts},
            # Checksums only where an operation needs one: S3-compatible stores differ in the
            # newer ones, and a whole-object checksum cannot be checked on a ranged read.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        ),
    )


class S3Store(JobStore):
    def __init__(self, bucket: str, prefix: str, settings: Settings):
        self.bucket = bucket
        self.prefix = prefix
        self.staging_root = settings.scratch_path / "uploads"
        self.client = _client(settings, connect_timeout=5, read_timeout=60, attempts=3)
        # check() answers a readiness probe: one quick try, not three patient ones.
        self.check_client = _client(settings, connect_timeout=2, read_timeout=5, attempts=1)
        threshold = int(settings.s3_multipart_mb * 1024 * 1024)
        self.transfer = TransferConfig(
            multipart_threshold=threshold, multipart_chunksize=max(threshold, 5 << 20)
        )

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.client.meta.endpoint_url}"

    def _failure(self, exc: Exception) -> StorageError:
        """What went wrong, for an operator: no bucket and refused credentials wait for one."""
        if isinstance(exc, Boto3Error) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__  # an upload's failure wraps the store's answer
        where = self.client.meta.endpoint_url
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            if code == "NoSuchBucket":
                return StoreMisconfigured(
                    f"the bucket {self.bucket!r} does not exist at {where}: create it with "
                    "`python -m contract.storage create-bucket`",
                    "bucket_missing",
                )
            if code in DENIED:
                return StoreMisconfigured(
                    f"the store at {where} refused the credentials or their rights on bucket "
                    f"{self.bucket!r} ({code}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the "
                    "bucket's policy",
                    "storage_denied",
                )
            return StorageError(f"object store: {code} {error.get('Message', '')}".strip())
        if isinstance(exc, NoCredentialsError):
            return StoreMisconfigured(
                "no credentials for the object store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                "storage_denied",
            )
        return StorageError(
            f"the object store at {where} is unreachable ({type(exc).__name__})", "storage_unreachable"
        )

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> "S3Store":
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"STORAGE_URL must be s3://BUCKET/PREFIX, not {url!r}")
        return cls(parts.netloc, f"{parts.path.strip('/') or DEFAULT_PREFIX}/", settings)

    def _key(self, job_id: str, name: str = "") -> str:
        return f"{self.prefix}{parse_job_id(job_id)}/{name}"

    def _upload(self, path: Path, key: str) -> None:
        extra = {"ContentType": content_type(key)}
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra, Config=self.transfer)

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
                self._upload(path, self._key(job_id, path.name))
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None
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
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None
        return found

    def publish(self, job_id: str, name: str, path: Path) -> None:
        try:
            self._upload(path, self._key(job_id, name))
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None
        path.unlink()

    def stat(self, job_id: str, name: str) -> StoredObject | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(job_id, name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING:
                return None
            raise self._failure(exc) from None
        except BotoCoreError as exc:
            raise self._failure(exc) from None
        return StoredObject(name, int(head["ContentLength"]))

    def read(self, job_id: str, name: str, start: int, end: int) -> Iterator[bytes]:
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=self._key(job_id, name), Range=f"bytes={start}-{end}"
            )["Body"]
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def presigned_url(self, job_id: str, name: str, seconds: int) -> str | None:
        key = self._key(job_id, name)
        params = {"Bucket": self.bucket, "Key": key, "ResponseContentType": content_type(key)}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)

    def check(self) -> None:
        key = f"{self.prefix}{READY_OBJECT}"
        try:
            self.check_client.put_object(Bucket=self.bucket, Key=key, Body=b"", ContentType="text/plain")
            self.check_client.delete_object(Bucket=self.bucket, Key=key)
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None

    def create(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in MISSING:
                raise self._failure(exc) from None  # 403: refused keys, or another account's bucket
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None
        return self._create_bucket()

    def _create_bucket(self) -> bool:
        region = self.client.meta.region_name
        where = {}  # us-east-1 (the default) is the one region that must not be named
        if region not in (None, "us-east-1"):
            where = {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self.client.create_bucket(Bucket=self.bucket, **where)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "BucketAlreadyOwnedByYou":  # made meanwhile, by another of our processes
                return False
            if code == "BucketAlreadyExists":
                taken = f"the bucket name {self.bucket!r} is taken by another account: choose another"
                raise StoreMisconfigured(taken, "bucket_taken") from None
            raise self._failure(exc) from None
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None
        return True

    def remove(self, job_id: str) -> None:
        prefix = self._key(job_id)
        shutil.rmtree(self.staging_root / job_id, ignore_errors=True)
        try:
            keys = [{"Key": entry["Key"]} for entry in self._objects(prefix)]
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000]})
            self._abort_incomplete_uploads(prefix)
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None

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
        root = self.prefix
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
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None
        return ids

    def last_change(self, job_id: str) -> float | None:
        try:
            times = [entry["LastModified"].timestamp() for entry in self._objects(self._key(job_id))]
        except BOTO_ERRORS as exc:
            raise self._failure(exc) from None
        return max(times) if times else None
