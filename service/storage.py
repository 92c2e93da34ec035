"""Job storage: one folder per job under DATA_DIR, shared by the API and the workers.

A job id comes from outside (URL paths, queue payloads), so it is checked to be a canonical UUID4
before any path is built from it: nothing else can name a folder.
"""

import shutil
import uuid
from pathlib import Path

SOURCE = "source"
DRIVING = "driving"
RESULT = "result.mp4"
PARTIAL_PATTERN = ".*.partial.mp4"  # the renderer's temporary name for an MP4 being written


class InvalidJobId(ValueError):
    pass


def new_job_id() -> str:
    return str(uuid.uuid4())


def parse_job_id(value: str) -> str:
    """The id itself when it is a canonical lowercase UUID4; InvalidJobId otherwise."""
    try:
        parsed = uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidJobId(f"not a job id: {value!r:.60}") from None
    if parsed.version != 4 or str(parsed) != value:
        raise InvalidJobId(f"not a job id: {value!r:.60}")
    return value


class JobStore:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir).resolve() / "jobs"

    def folder(self, job_id: str) -> Path:
        return self.root / parse_job_id(job_id)

    def create(self) -> tuple[str, Path]:
        """A new job id and its empty folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        job_id = new_job_id()
        folder = self.folder(job_id)
        folder.mkdir()
        return job_id, folder

    def input_path(self, job_id: str, role: str) -> Path | None:
        """The stored source or driving file (its name carries the sniffed extension)."""
        matches = sorted(self.folder(job_id).glob(f"{role}.*"))
        return matches[0] if matches else None

    def result_path(self, job_id: str) -> Path:
        return self.folder(job_id) / RESULT

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def remove_partials(self, job_id: str) -> None:
        """What an interrupted render left half-written (`.result.mp4.<pid>.partial.mp4`)."""
        folder = self.folder(job_id)
        if folder.is_dir():
            for path in folder.glob(PARTIAL_PATTERN):
                path.unlink(missing_ok=True)

    def job_ids(self) -> list[str]:
        """Ids of the folders present; anything else under the root is ignored."""
        if not self.root.is_dir():
            return []
        ids = []
        for entry in self.root.iterdir():
            try:
                ids.append(parse_job_id(entry.name))
            except InvalidJobId:
                continue
        return ids
