"""Where a job's files live: a local folder (one machine) or an S3-compatible object store (many).

Both stores keep the same objects per job, under `DATA_DIR/jobs/<id>/` or `s3://BUCKET/PREFIX/<id>/`
(PREFIX `jobs` unless STORAGE_URL names one), each with its content type: the inputs `source.<ext>` and
`driving.<ext>`, and the artifacts a render publishes (`result.<format>`, and `poster.jpg` when
asked). Processes on different machines share nothing but Redis and the store: the API receives an
upload into its own staging folder and commits it to the store once it is checked; a worker fetches
the inputs into its own scratch folder, renders there, publishes the result and removes its scratch.

An object appears whole or not at all: the local store renames a finished file into place, and S3
makes a (multipart) upload visible only when it completes, so nothing half-written is ever served.
`python -m contract.storage create-bucket` makes the bucket; `check` says whether the store works.
"""

from contract.settings import Settings
from contract.storage.base import (
    DRIVING,
    POSTER,
    SOURCE,
    InvalidJobId,
    JobStore,
    StorageError,
    StoredObject,
    StoreMisconfigured,
    content_type,
    new_job_id,
    parse_job_id,
    result_name,
)

__all__ = [
    "DRIVING",
    "POSTER",
    "SOURCE",
    "InvalidJobId",
    "JobStore",
    "StorageError",
    "StoredObject",
    "StoreMisconfigured",
    "content_type",
    "new_job_id",
    "open_store",
    "parse_job_id",
    "result_name",
]


def open_store(settings: Settings) -> JobStore:
    """The store STORAGE_URL names: s3://BUCKET/PREFIX, or unset for the folder DATA_DIR."""
    if settings.storage_url:
        from contract.storage.s3 import S3Store  # boto3 only where S3 is used

        return S3Store.from_url(settings.storage_url, settings)
    from contract.storage.local import LocalStore

    return LocalStore(settings.data_dir)
