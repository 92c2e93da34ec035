"""The rendering pipeline: one source image, one driving video, one MP4 out.

Decoding (an ffmpeg process fed by a reader thread), the model (this thread) and encoding (an
ffmpeg process fed by a writer thread) overlap, with small bounded queues between them so memory
does not grow with the video's length.
"""

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from worker.errors import RenderCanceled, RenderError, StorageError
from worker.models import AnimationModel, Generator, SourceFeatures, normalize_kp
from worker.models.motion_transfer import convex_hull_area
from worker.optimize import low_precision_generator, prepare_for_inference
from worker.subject.framing import DEFAULT_CROP, check_framing, plan_framing
from worker.video_io import Mp4Writer, VideoInfo, probe_video

# (frames done, frames expected, stage): "analysing" while the crop follows the subject through the
# driving video (crop other than "none"), then "rendering".
ProgressCallback = Callable[[int, int, str], None]
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RenderOptions:
    mode: Literal["relative", "absolute"] = "relative"
    adapt_scale: bool = True
    driving_start: int | Literal["best"] = 0
    size: int | None = None  # output side in pixels; the model's resolution when None
    batch_size: int = 4
    audio: bool = True
    device: str = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    crop: str = DEFAULT_CROP  # "auto", "face", "body", "none" or "x,y,w,h": see worker/subject/framing.py
    paste_back: bool = False

    def validate(self) -> None:
        if self.mode not in ("relative", "absolute"):
            raise RenderError(f"mode must be relative or absolute, not {self.mode!r}", "invalid_option")
        if self.driving_start != "best" and (
            not isinstance(self.driving_start, int) or self.driving_start < 0
        ):
            raise RenderError("driving_start must be a frame index >= 0 or 'best'", "invalid_option")
        if self.size is not None and not (16 <= self.size <= 2048 and self.size % 2 == 0):
            raise RenderError("size must be an even number of pixels from 16 to 2048", "invalid_option")
        if not 1 <= self.batch_size <= 256:
            raise RenderError("batch_size must be from 1 to 256", "invalid_option")
        try:
            check_framing(self.crop, self.paste_back, self.size)
        except ValueError as exc:
            raise RenderError(str(exc), "invalid_option") from None
        if self.precision not in PRECISIONS:
            raise RenderError(f"precision must be one of {', '.join(PRECISIONS)}", "invalid_option")


@dataclass
class RenderResult:
    frames: int
    fps: float
    width: int
    height: int
    audio: bool
    driving_start: int
    precision: str
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def to_tensor(frames: np.ndarray, device: str) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1], converted on `device`.

    Bytes cross to a GPU as uint8 (a quarter of the float size) from pinned memory, asynchronously.
    """
    pixels = torch.from_numpy(frames)
    if torch.device(device).type == "cuda":
        pixels = pixels.pin_memory().to(device, non_blocking=True)
    return pixels.permute(0, 3, 1, 2).float().div_(255)


def to_frames(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8."""
    return images.float().clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _normalized_shape(kp: np.ndarray) -> np.ndarray:
    """Keypoints (K, 2) centred and scaled by their hull, so only their arrangement is compared."""
    centred = kp - kp.mean(axis=0)
    area = convex_hull_area(kp)
    return centred / np.sqrt(area) if area > 0 else centred


def best_start_frame(kp_source: np.ndarray, kp_driving: np.ndarray) -> int:
    """Index of the driving frame whose keypoint arrangement is closest to the source's."""
    target = _normalized_shape(kp_source)
    errors = [((_normalized_shape(kp) - target) ** 2).sum() for kp in kp_driving]
    return int(np.argmin(errors))


class _Stage:
    """Accumulates the wall time spent blocked in one pipeline stage."""

    def __init__(self):
        self.seconds = 0.0

    @contextlib.contextmanager
    def timed(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


def _prefetch(batches: Iterator[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """Run a batch iterator in a thread, `depth` batches ahead; errors re-raised in the caller."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put(exc)

    thread = threading.Thread(target=produce, name="decode", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                slots.get_nowait()
        thread.join(timeout=5)


def _batched(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


class _BackgroundWriter:
    """Feeds an Mp4Writer from a thread so encoding overlaps the next batch's inference."""

    def __init__(self, writer: Mp4Writer):
        self.writer = writer
        self.slots: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="encode", daemon=True)
        self.thread.start()

    def _run(self):
        while (batch := self.slots.get()) is not None:
            if self.error is not None:
                continue
            try:
                for frame in batch:
                    self.writer.write(frame)
            except BaseException as exc:  # reported by put() or finish()
                self.error = exc

    def put(self, batch: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.slots.put(batch)

    def finish(self) -> None:
        self.slots.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        self.writer.close()

    def abort(self) -> None:
        self.slots.put(None)
        self.thread.join(timeout=10)
        with contextlib.suppress(RenderError, OSError):
            self.writer.close()


@dataclass
class SourceState:
    """What a job computes once from its source image, then reuses for every driving frame."""

    features: SourceFeatures
    kp_source: dict[str, torch.Tensor]
    precision: str = "fp32"
    relative: bool = True
    adapt_scale: bool = True
    kp_initial: dict[str, torch.Tensor] | None = None  # taken from the first frame when None


def _normalized(state: SourceState, kp_driving: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Driving keypoints as the generator should see them for this source; the first frame a state
    sees becomes its initial frame unless it has one."""
    if state.kp_initial is None:
        state.kp_initial = {k: v[:1] for k, v in kp_driving.items()}
    return normalize_kp(
        state.kp_source,
        kp_driving,
        state.kp_initial,
        adapt_movement_scale=state.adapt_scale and state.relative,
        use_relative_movement=state.relative,
        use_relative_jacobian=state.relative,
    )


class Renderer:
    """Holds a loaded model, prepared for inference, and renders jobs with it.

    One instance per worker process. It takes ownership of `model`: batch norm is folded into the
    convolutions and the weights are made channels-last, in place.
    """

    def __init__(self, model: AnimationModel, device: str = "cpu"):
        self.model = prepare_for_inference(model, device)
        self.device = device
        self._generators = {"fp32": self.model.generator}

    def generator(self, precision: str) -> Generator:
        """The generator for a precision; a lowered copy is made on first use and kept."""
        if precision not in self._generators:
            self._generators[precision] = low_precision_generator(self.model.generator, PRECISIONS[precision])
        return self._generators[precision]

    def _input(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.to(self.device).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def keypoints(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keypoints of (N, 3, H, W) frames, always in float32: softmax heatmaps need the range."""
        return self.model.kp_detector(self._input(frames))

    @torch.inference_mode()
    def prepare_source(
        self,
        source: torch.Tensor,
        precision: str = "fp32",
        relative: bool = True,
        adapt_scale: bool = True,
    ) -> SourceState:
        """Source keypoints and encoder features for a (1, 3, H, W) source in [0, 1].

        The driving frame that motion is measured from (`kp_initial`) is the first one animated,
        unless the caller sets it.
        """
        source = self._input(source)
        kp_source = self.model.kp_detector(source)
        features = self.generator(precision).encode_source(source)
        return SourceState(features, kp_source, precision, relative, adapt_scale)

    @torch.inference_mode()
    def animate_batch(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Animated frames (N, 3, H, W) in [0, 1] for driving frames (N, 3, H, W) in [0, 1].

        `kp_driving`: the frames' keypoints when an earlier pass over the video already has them.
        """
        if kp_driving is None:
            kp_driving = self.keypoints(frames)
        kp_norm = _normalized(state, kp_driving)
        n = frames.shape[0]
        kp_source = {k: v.expand(n, *v.shape[1:]) for k, v in state.kp_source.items()}
        generator = self.generator(state.precision)
        out = generator.animate(state.features.expand(n), kp_source, kp_norm, maps=False)
        return out["prediction"]

    @torch.inference_mode()
    def animate_sessions(self, states: list[SourceState], frames: torch.Tensor) -> torch.Tensor:
        """One driving frame for each of several sources as one batch: frames[i] (3, H, W) animates
        states[i]. The states must share a precision. Returns (N, 3, H, W) in [0, 1]."""
        if len(states) == 1:
            return self.animate_batch(states[0], frames)
        if len({state.precision for state in states}) != 1:
            raise ValueError("sessions batched together must share a precision")
        kp_driving = self.keypoints(frames)
        norms = [
            _normalized(s, {k: v[i : i + 1] for k, v in kp_driving.items()}) for i, s in enumerate(states)
        ]
        kp_norm = {k: torch.cat([norm[k] for norm in norms]) for k in norms[0]}
        kp_source = {k: torch.cat([s.kp_source[k] for s in states]) for k in states[0].kp_source}
        parts = zip(*((s.features.image, s.features.encoded, s.features.small) for s in states), strict=True)
        features = SourceFeatures(*(torch.cat(part) for part in parts))
        generator = self.generator(states[0].precision)
        return generator.animate(features, kp_source, kp_norm, maps=False)["prediction"]

    @torch.inference_mode()
    def _driving_keypoints(self, frames: Iterator[np.ndarray], batch_size: int, stop_at: int | None):
        """Keypoints (T, K, 2) and jacobians of the driving frames, up to and including stop_at."""
        values, jacobians = [], []
        seen = 0
        for batch in _batched(frames, batch_size):
            kp = self.keypoints(to_tensor(batch, self.device))
            values.append(kp["value"])
            if "jacobian" in kp:
                jacobians.append(kp["jacobian"])
            seen += len(batch)
            if stop_at is not None and seen > stop_at:
                break
        out = {"value": torch.cat(values)}
        if jacobians:
            out["jacobian"] = torch.cat(jacobians)
        return out

    @torch.inference_mode()
    def render(
        self,
        source_image: np.ndarray,
        driving_path: str | Path,
        out_path: str | Path,
        options: RenderOptions | None = None,
        on_progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        info: VideoInfo | None = None,
    ) -> RenderResult:
        """Animate `source_image` ((H, W, 3) uint8) by the video at `driving_path` into `out_path`.

        The MP4 appears at `out_path` only when complete; on any failure nothing is left there.
        """
        options = options or RenderOptions()
        options.validate()
        started = time.perf_counter()
        driving_path, out_path = Path(driving_path), Path(out_path)
        info = info or probe_video(driving_path)
        h, w = self.model.frame_shape
        decode, infer, encode, crop = _Stage(), _Stage(), _Stage(), _Stage()
        analysed = None if on_progress is None else lambda done, total: on_progress(done, total, "analysing")
        with crop.timed():
            framing = plan_framing(
                source_image, driving_path, info, options.crop, options.paste_back, should_cancel, analysed
            )
        source = to_tensor(framing.source_input(h, w)[None], self.device)

        with infer.timed():
            state = self.prepare_source(
                source,
                precision=options.precision,
                relative=options.mode == "relative",
                adapt_scale=options.adapt_scale,
            )

        start = options.driving_start if options.mode == "relative" else 0
        kp_all: dict[str, torch.Tensor] = {}  # (T, K, 2) / (T, K, 2, 2) of the first T driving frames
        if start != 0:
            with decode.timed():
                stop_at = None if start == "best" else start
                kp_all = self._driving_keypoints(framing.driving_frames(h, w), options.batch_size, stop_at)
            if start == "best":
                start = best_start_frame(
                    state.kp_source["value"][0].cpu().numpy(), kp_all["value"].cpu().numpy()
                )
            elif start >= len(kp_all["value"]):
                last = len(kp_all["value"]) - 1
                raise RenderError(f"driving_start {start} is past the last frame ({last})", "invalid_option")
            state.kp_initial = {k: v[start : start + 1] for k, v in kp_all.items()}
        known_frames = len(kp_all["value"]) if kp_all else 0  # their keypoints are not computed again

        audio = options.audio and info.has_audio
        out_size = (options.size, options.size) if options.size else None
        out_w, out_h = framing.output_size(w, h)
        tmp_path = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial.mp4")
        try:
            writer = _BackgroundWriter(
                Mp4Writer(tmp_path, out_w, out_h, info.fps, driving_path if audio else None, out_size)
            )
        except RenderError:
            tmp_path.unlink(missing_ok=True)
            raise
        done = 0
        total = info.frames
        try:
            batches = _prefetch(_batched(framing.driving_frames(h, w), options.batch_size))
            while True:
                with decode.timed():
                    batch = next(batches, None)
                if batch is None:
                    break
                if should_cancel is not None and should_cancel():
                    raise RenderCanceled("the job was canceled")
                with infer.timed():
                    end = done + len(batch)
                    known = {k: v[done:end] for k, v in kp_all.items()} if end <= known_frames else None
                    rendered = to_frames(self.animate_batch(state, to_tensor(batch, self.device), known))
                with encode.timed():
                    writer.put(framing.finish(rendered))
                done += len(batch)
                total = max(total, done)
                if on_progress is not None:
                    on_progress(done, total, "rendering")
            if done == 0:
                raise RenderError(f"{driving_path.name} has no decodable frame", "invalid_video")
            with encode.timed():
                writer.finish()
            try:
                tmp_path.replace(out_path)
            except OSError as exc:
                raise StorageError(f"cannot write {out_path}: {exc}") from exc
        except BaseException:
            writer.abort()
            tmp_path.unlink(missing_ok=True)
            raise

        return RenderResult(
            frames=done,
            fps=info.fps,
            width=options.size or out_w,
            height=options.size or out_h,
            audio=audio,
            driving_start=start,
            precision=options.precision,
            timings={
                "decode": round(decode.seconds, 4),
                "inference": round(infer.seconds, 4),
                "encode": round(encode.seconds, 4),
                "crop": round(crop.seconds, 4),
                "total": round(time.perf_counter() - started, 4),
            },
        )
