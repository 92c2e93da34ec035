"""The store's interface and the job ids that name its folders."""

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SOURCE = "source"
DRIVING = "driving"
POSTER = "poster.jpg"
ROLES = (SOURCE, DRIVING)
# Every stored file's type by its extension: inputs (source.<ext>, driving.<ext>), results and the
# poster. A store that guesses types itself guesses some wrong (.webm as audio/webm).
CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
}


def content_type(name: str) -> str:
    """The media type of the stored file `name`, by its extension; application/octet-stream if unknown."""
    return CONTENT_TYPES.get(name.rpartition(".")[2].lower(), "application/octet-stream")


def result_name(format: str = "mp4") -> str:
    """The stored name of a result in `format` (contract.options.OutputFormatName): result.<format>."""
    return f"result.{format}"


class InvalidJobId(ValueError):
    pass


class StorageError(OSError):
    """The store refused or failed an operation; `code` says how. A transient one (unreachable, a
    hiccup) may pass if retried; one that is not (no bucket, refused credentials) waits for an operator."""

    def __init__(self, message: str, code: str = "storage_unavailable", transient: bool = True):
        super().__init__(message)
        self.code = code
        self.transient = transient


class StoreMisconfigured(StorageError):
    """The store cannot work until its operator acts: its bucket is missing, or it refuses the credentials."""

    def __init__(self, message: str, code: str):
        super().__init__(message, code, transient=False)


def new_job_id() -> str:
    return str(uuid.uuid4())


def parse_job_id(value: str) -> str:
    """The id itself when it is a canonical lowercase UUID4; InvalidJobId otherwise.

    A job id comes from outside (URL paths, queue payloads), so it is checked before any path or
    object key is built from it: nothing else can name a job's files.
    """
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidJobId(f"not a job id: {value!r:.60}") from None
    if parsed.version != 4 or str(parsed) != value:
        raise InvalidJobId(f"not a job id: {value!r:.60}")
    return value


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    path: Path | None = None  # a local file, when the store is a folder on this machine


class JobStore(ABC):
    """The files of every job; see the package's docstring for the flow between API and workers."""

    @abstractmethod
    def staging(self, job_id: str) -> Path:
        """A new, empty folder on this machine for receiving an upload for `job_id`."""

    @abstractmethod
    def commit_inputs(self, job_id: str, files: dict[str, Path]) -> None:
        """Store the checked uploads (role -> staged file named `<role>.<ext>`) and drop the staging."""

    @abstractmethod
    def fetch_inputs(self, job_id: str, scratch: Path) -> dict[str, Path]:
        """The job's inputs as local files (role -> path), fetched into `scratch` where needed."""

    @abstractmethod
    def publish(self, job_id: str, name: str, path: Path) -> None:
        """Store the finished file at `path` as the job's `name`; it is visible only once complete."""

    @abstractmethod
    def stat(self, job_id: str, name: str) -> StoredObject | None:
        """The stored object, or None when it is not (or no longer) there."""

    @abstractmethod
    def read(self, job_id: str, name: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end (inclusive) of the object, in chunks."""

    def presigned_url(self, job_id: str, name: str, seconds: int) -> str | None:
        """A URL a client may GET the object from for `seconds`; None when the store has none."""
        return None

    @abstractmethod
    def check(self) -> None:
        """Write and remove a small object; StorageError saying what is wrong when the store cannot."""

    @abstractmethod
    def create(self) -> bool:
        """Create the store's bucket or folder; False when it was already there."""

    @abstractmethod
    def remove(self, job_id: str) -> None:
        """Everything of the job, staged, stored or half-uploaded."""

    @abstractmethod
    def job_ids(self) -> list[str]:
        """Ids of the jobs with anything stored; anything else in the store is ignored."""

    @abstractmethod
    def last_change(self, job_id: str) -> float | None:
        """Unix time of the newest object of the job; None when there is none."""
