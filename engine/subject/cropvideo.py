"""Writing a square copy of a video that follows its subject, and the boxes it was cut at."""

import contextlib
import json
import os
from pathlib import Path

from engine.errors import RenderError, StorageError
from engine.media.video_io import Mp4Writer, probe_video, read_frames
from engine.progress import ProgressCallback, ProgressModel
from engine.subject.autocrop import CropPlan, Kind, video_crop
from engine.subject.cutout import cut_out


def crop_video(
    in_path: str | Path,
    out_path: str | Path,
    boxes_path: str | Path | None = None,
    kind: Kind = "auto",
    size: int = 512,
    audio: bool = True,
    on_progress: ProgressCallback | None = None,
) -> CropPlan:
    """Crops every frame of `in_path` to its box and writes a size x size MP4 to `out_path`.

    `boxes_path` gets a JSON list with one [x, y, w, h] per input frame, in integer input pixels
    (a body crop may reach outside the frame; that part is filled with the frame's edge). Both
    files appear only when complete.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    info = probe_video(in_path)
    progress = ProgressModel([("analysing", info.frames), ("encoding", info.frames)], on_progress)

    def analysed(index: int) -> None:
        progress.update("analysing", index + 1, max(info.frames, index + 1))

    plan = video_crop(in_path, info, kind, analysed)
    tmp_video = _partial(out_path)
    tmp_boxes = _partial(Path(boxes_path)) if boxes_path else None
    boxes_written = False
    try:
        writer = Mp4Writer(tmp_video, size, size, info.fps, in_path if audio and info.has_audio else None)
        try:
            for index, frame in enumerate(read_frames(in_path, info.height, info.width, info)):
                writer.write(cut_out(frame, plan.box(index), size, size))
                progress.update("encoding", index + 1, max(len(plan.boxes), index + 1))
        except BaseException:
            with contextlib.suppress(RenderError):
                writer.close()
            raise
        writer.close()
        if tmp_boxes is not None:
            boxes = [list(plan.box(i).rounded()) for i in range(len(plan.boxes))]
            tmp_boxes.write_text(json.dumps(boxes) + "\n")
            tmp_boxes.replace(boxes_path)
            boxes_written = True
        tmp_video.replace(out_path)
    except OSError as exc:
        if boxes_written:
            Path(boxes_path).unlink(missing_ok=True)
        raise StorageError(f"cannot write {out_path}: {exc}") from exc
    finally:
        tmp_video.unlink(missing_ok=True)
        if tmp_boxes is not None:
            tmp_boxes.unlink(missing_ok=True)
    return plan


def _partial(path: Path) -> Path:
    """A hidden temporary name next to `path`, renamed onto it once complete."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
