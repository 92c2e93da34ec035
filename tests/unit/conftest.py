"""The unit tier: in this process only. A test here, or a fixture it uses, that starts a process (a
server, a worker, the CLI, ffmpeg, a venv build, an OpenVINO conversion) fails, so the tier stays
fast and self-contained; real clips are decoded in-process with PyAV."""

import subprocess

import numpy as np
import pytest

from engine.frames import to_tensor
from engine.media.video_io import load_image, resize_image


class _NoProcesses:
    def __init__(self, *args, **kwargs):
        raise AssertionError(f"the unit tier starts no process (tried {args[0] if args else kwargs})")


@pytest.fixture(scope="package", autouse=True)
def _no_processes():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "Popen", _NoProcesses)
        yield


def clip_frames(path, size: tuple[int, int], every: int = 1, count: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a video, every `every`-th, resized: decoded by PyAV in this process."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                frames.append(resize_image(frame.to_ndarray(format="rgb24"), *size))
            if count is not None and len(frames) == count:
                break
    return np.stack(frames)


@pytest.fixture(scope="package")
def real_frames(clip, portrait):
    """A portrait and 8 frames of a real talking-head clip (every 5th), at 64x64, as tensors."""
    source = resize_image(load_image(portrait), 64, 64)
    return to_tensor(source[None], "cpu"), to_tensor(clip_frames(clip, (64, 64), every=5, count=8), "cpu")
