"""The store as a folder, DATA_DIR/jobs/<id>/, for one machine (or several sharing that folder)."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from contract.storage.base import ROLES, InvalidJobId, JobStore, StorageError, StoredObject, parse_job_id

CHUNK = 1024 * 1024


class LocalStore(JobStore):
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir).resolve() / "jobs"

    def __str__(self) -> str:
        return f"the folder {self.root}"

    def folder(self, job_id: str) -> Path:
        return self.root / parse_job_id(job_id)

    def staging(self, job_id: str) -> Path:
        """The job's own folder: an upload is received where it will stay."""
        folder = self.folder(job_id)
        folder.mkdir(parents=True)
        return folder

    def commit_inputs(self, job_id: str, files: dict[str, Path]) -> None:
        return None  # already in place

    def fetch_inputs(self, job_id: str, scratch: Path) -> dict[str, Path]:
        found = {}
        for role in ROLES:
            matches = sorted(self.folder(job_id).glob(f"{role}.*"))
            if matches:
                found[role] = matches[0]
        return found

    def publish(self, job_id: str, name: str, path: Path) -> None:
        folder = self.folder(job_id)
        if not folder.is_dir():
            raise FileNotFoundError(f"job {job_id} has no folder (deleted while rendering?)")
        try:
            os.replace(path, folder / name)
        except OSError:  # another file system: copy beside the target, then rename into place
            partial = folder / f".{name}.{os.getpid()}.partial"
            shutil.copyfile(path, partial)
            os.replace(partial, folder / name)
            path.unlink()

    def stat(self, job_id: str, name: str) -> StoredObject | None:
        path = self.folder(job_id) / name
        try:
            return StoredObject(name, path.stat().st_size, path)
        except FileNotFoundError:
            return None

    def read(self, job_id: str, name: str, start: int, end: int) -> Iterator[bytes]:
        with (self.folder(job_id) / name).open("rb") as file:
            file.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = file.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def check(self) -> None:
        probe = self.root / f".ready.{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = f"the job folder cannot be written ({exc.strerror})"
            raise StorageError(reason, "storage_unwritable") from None

    def create(self) -> bool:
        existed = self.root.is_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        return not existed

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def job_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        ids = []
        for entry in self.root.iterdir():
            try:
                ids.append(parse_job_id(entry.name))
            except InvalidJobId:
                continue
        return ids

    def last_change(self, job_id: str) -> float | None:
        folder = self.folder(job_id)
        try:
            return max([folder.stat().st_mtime] + [entry.stat().st_mtime for entry in folder.iterdir()])
        except FileNotFoundError:
            return None
