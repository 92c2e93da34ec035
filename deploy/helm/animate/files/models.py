"""The model files of a Kubernetes deployment, kept in the object store beside the jobs.

    python models.py upload s3://BUCKET/PREFIX FILE...   # an operator puts checkpoints there
    python models.py fetch s3://BUCKET/PREFIX FOLDER     # each worker's init container copies them

Only checkpoint files (`*.pth.tar`, `*.pth`, as WEIGHTS_DIR holds them) are copied, each to a
temporary name renamed once whole, so a worker never starts on half a file. The store is reached as
the service reaches it: boto3 reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and
AWS_ENDPOINT_URL_S3 itself (path-style addressing with an endpoint, as MinIO and Ceph expect). Any
failure prints one line and exits 2. It needs only boto3, which both images have.
"""

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

SUFFIXES = (".pth.tar", ".pth")


class ModelsError(Exception):
    pass


def _client():
    style = "path" if os.environ.get("AWS_ENDPOINT_URL_S3") else "auto"
    config = Config(s3={"addressing_style": style}, retries={"mode": "standard", "max_attempts": 5})
    return boto3.client("s3", config=config)


def _location(url: str) -> tuple[str, str]:
    """s3://BUCKET/PREFIX as (bucket, prefix ending in / or empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ModelsError(f"not an s3://BUCKET/PREFIX URL: {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _is_checkpoint(name: str) -> bool:
    return any(name.endswith(s) and len(name) > len(s) for s in SUFFIXES) and "/" not in name


def fetch(url: str, folder: Path) -> list[Path]:
    """Every checkpoint directly under the prefix, into `folder`."""
    bucket, prefix = _location(url)
    client = _client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    names = [o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])]
    wanted = sorted(name for name in names if _is_checkpoint(name))
    if not wanted:
        raise ModelsError(f"no checkpoint (*.pth.tar, *.pth) under {url}")
    folder.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name in wanted:
        target = folder / name
        partial = folder / f".{name}.partial"
        client.download_file(bucket, prefix + name, str(partial))
        partial.replace(target)
        fetched.append(target)
    return fetched


def upload(url: str, files: list[Path]) -> list[str]:
    bucket, prefix = _location(url)
    for path in files:
        if not _is_checkpoint(path.name) or not path.is_file():
            raise ModelsError(f"not a checkpoint file (*.pth.tar, *.pth): {path}")
    client = _client()
    for path in files:
        client.upload_file(str(path), bucket, prefix + path.name)
    return [f"s3://{bucket}/{prefix}{path.name}" for path in files]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("fetch", "upload") or (argv[0] == "fetch" and len(argv) != 3):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        if argv[0] == "fetch":
            done = [str(p) for p in fetch(argv[1], Path(argv[2]))]
        else:
            done = upload(argv[1], [Path(p) for p in argv[2:]])
    except (ModelsError, BotoCoreError, ClientError, OSError) as exc:
        print(f"models: error: {exc}", file=sys.stderr)
        return 2
    for line in done:
        print(f"models: {argv[0]}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
