"""The rendering pipeline: one source image, one driving video, one video out (worker/output.py).

Decoding (an ffmpeg process fed by a reader thread), the model (this thread) and paste-back with
encoding (an ffmpeg process fed by a writer thread) overlap, with small bounded queues between them
so memory does not grow with the video's length. Progress: worker/progress.py.
"""

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from contract.job import JobResult
from contract.options import AnimationOptions
from worker.adapters import ModelAdapter, SourceState, model_adapter
from worker.adapters.state import frame_keypoints
from worker.errors import RenderCanceled, RenderError
from worker.models import AnimationModel, TPSMModel
from worker.models.motion_transfer import convex_hull_area
from worker.output import FORMATS, RenderOutput, encoding_units, frame_step, output_size
from worker.progress import ProgressCallback, ProgressModel, StageCosts
from worker.subject.framing import plan_framing
from worker.subject.paste import ModelFrame
from worker.video_io import VideoInfo, probe_video

RUNTIMES = ("torch", "openvino")


class RenderOptions(AnimationOptions):
    """A request's options (contract/options.py) plus how this engine runs them; checked when built."""

    size: int | None = Field(None, ge=16, le=2048, multiple_of=2)  # output side; None: the model's
    batch_size: int = Field(4, ge=1, le=256)
    device: str = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @model_validator(mode="after")
    def _size_and_paste_back(self) -> "RenderOptions":
        if self.paste_back and self.size is not None:
            raise ValueError("size cannot be combined with paste_back: the video has the source image's size")
        return self


class RenderResult(JobResult):
    """The job's result summary (contract/job.py) plus the seconds each stage of the render took."""

    timings: dict[str, float] = Field(default_factory=dict)


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


def model_frames(out: dict[str, torch.Tensor]) -> list[ModelFrame]:
    """An adapter's output as numpy frames with their motion, for paste-back."""
    images = to_frames(out["prediction"])
    deformation = out.get("deformation")
    occlusion = out.get("occlusion_map")
    deformation = None if deformation is None else deformation.float().cpu().numpy()  # (N, h, w, 2)
    occlusion = None if occlusion is None else occlusion.float()[:, 0].cpu().numpy()  # (N, h, w)
    return [
        ModelFrame(
            image,
            None if deformation is None else deformation[i],
            None if occlusion is None else occlusion[i],
        )
        for i, image in enumerate(images)
    ]


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
    """Runs `consume` on each batch in a thread, so paste-back and encoding overlap the next batch's
    inference; its errors are raised by put() or finish()."""

    def __init__(self, consume: Callable[[object], None]):
        self.consume = consume
        self.slots: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="encode", daemon=True)
        self.thread.start()

    def _run(self):
        while (batch := self.slots.get()) is not None:
            if self.error is not None:
                continue
            try:
                self.consume(batch)
            except BaseException as exc:  # reported by put() or finish()
                self.error = exc

    def put(self, batch: object) -> None:
        if self.error is not None:
            raise self.error
        self.slots.put(batch)

    def finish(self) -> None:
        self.slots.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self.slots.put(None)
        self.thread.join(timeout=10)


class Renderer:
    """Holds a loaded model, prepared for inference, and renders jobs with it.

    One instance per worker process. It takes ownership of `model`: batch norm is folded into the
    convolutions and the weights are made channels-last, in place. What differs between model
    families is in its adapter (`worker/adapters/`); `runtime` picks torch (any device) or openvino
    (CPU; the model's graphs converted once into `cache_dir`, with `on_converted(graphs done,
    graphs)` while converting).
    """

    def __init__(
        self,
        model: AnimationModel | TPSMModel,
        device: str = "cpu",
        runtime: str = "torch",
        cache_dir: Path | None = None,
        on_converted: Callable[[int, int], None] | None = None,
    ):
        self.adapter = _runtime_adapter(model, device, runtime, cache_dir, on_converted)
        self.model = self.adapter.model
        self.runtime = runtime
        self.device = device
        self.costs = StageCosts()  # seconds per frame of each stage, for progress; learnt job by job

    def check_mode(self, mode: str, background_motion: bool = False) -> None:
        """A RenderError (invalid_option) when the model cannot render in `mode` or with background motion."""
        if mode not in self.model.modes:
            raise RenderError(
                f"mode {mode!r} is not available with this {self.model.family} model "
                f"(it offers {', '.join(self.model.modes)})",
                "invalid_option",
            )
        if background_motion and not self.model.background_motion:
            raise RenderError("this model has no background motion predictor", "invalid_option")

    def _input(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.to(self.device).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def keypoints(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keypoints of (N, 3, H, W) frames, always in float32: heatmaps and splines need the range."""
        return self.adapter.keypoints(self._input(frames))

    @torch.inference_mode()
    def prepare_source(
        self,
        source: torch.Tensor,
        precision: str = "fp32",
        mode: str = "relative",
        adapt_scale: bool = True,
        background_motion: bool = False,
    ) -> SourceState:
        """Source keypoints and encoder features for a (1, 3, H, W) source in [0, 1].

        The driving frame that motion is measured from (`kp_initial`) is the first one animated,
        unless the caller sets it.
        """
        self.check_mode(mode, background_motion)
        return self.adapter.prepare_source(
            self._input(source), precision, mode, adapt_scale, background_motion
        )

    @torch.inference_mode()
    def animate_with_motion(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The adapter's output for driving frames (N, 3, H, W) in [0, 1]: `prediction` (N, 3, H, W)
        in [0, 1] and, for models with dense motion, `deformation` and `occlusion_map`.

        `kp_driving`: the frames' keypoints when an earlier pass over the video already has them.
        """
        frames = self._input(frames)
        if kp_driving is None:
            kp_driving = self.adapter.keypoints(frames)
        if state.kp_initial is None:
            state.kp_initial = {k: v[:1] for k, v in kp_driving.items()}
        return self.adapter.animate(state, frames, kp_driving)

    @torch.inference_mode()
    def animate_batch(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Animated frames (N, 3, H, W) in [0, 1] for driving frames (N, 3, H, W) in [0, 1]."""
        return self.animate_with_motion(state, frames, kp_driving)["prediction"]

    @torch.inference_mode()
    def animate_sessions(self, states: list[SourceState], frames: torch.Tensor) -> torch.Tensor:
        """One driving frame for each of several sources, as one batch: frames[i] (3, H, W) in [0, 1]
        animates states[i]. Live sessions share the model this way (worker/live_engine.py). The
        states must share precision, mode, scale adaptation and background motion. Returns
        (N, 3, H, W) in [0, 1]."""
        if len(states) == 1:
            return self.animate_batch(states[0], frames)
        if len({state.batch_key for state in states}) != 1:
            raise ValueError("sessions batched together must share precision, mode and options")
        frames = self._input(frames)
        kp_driving = self.adapter.keypoints(frames)
        for i, state in enumerate(states):
            if state.kp_initial is None:
                state.kp_initial = frame_keypoints(kp_driving, i)
        return self.adapter.animate_sessions(states, frames, kp_driving)["prediction"]

    @torch.inference_mode()
    def still(self, state: SourceState) -> ModelFrame:
        """The source rendered with no motion: what paste-back compares every frame with."""
        return model_frames(self.adapter.still(state))[0]

    @torch.inference_mode()
    def _driving_keypoints(
        self,
        frames: Iterator[np.ndarray],
        batch_size: int,
        stop_at: int | None,
        on_frames: Callable[[int], None] | None = None,
    ):
        """The detector's outputs (keypoints (T, K, 2), ...) for the driving frames up to and including
        stop_at."""
        parts = []
        seen = 0
        for batch in _batched(frames, batch_size):
            parts.append(self.keypoints(to_tensor(batch, self.device)))
            seen += len(batch)
            if on_frames is not None:
                on_frames(seen)
            if stop_at is not None and seen > stop_at:
                break
        return {key: torch.cat([kp[key] for kp in parts]) for key in parts[0]}

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
        poster_path: str | Path | None = None,
    ) -> RenderResult:
        """Animate `source_image` ((H, W, 3) uint8) by the video at `driving_path` into `out_path`.

        The video (and with `options.poster` the JPEG at `poster_path`, by default poster.jpg next
        to the video) appear only when complete; on any failure nothing is left there.
        """
        options = options or RenderOptions()
        self.check_mode(options.mode, options.background_motion)
        started = time.perf_counter()
        driving_path, out_path = Path(driving_path), Path(out_path)
        info = info or probe_video(driving_path)
        fmt = FORMATS[options.format]
        step = frame_step(info.fps, fmt)  # driving frames per output frame
        expected = math.ceil(info.frames / step)
        if options.poster and options.poster_frame >= expected:
            message = f"poster_frame {options.poster_frame} is past the last frame ({expected - 1})"
            raise RenderError(message, "invalid_option")
        start = options.driving_start if options.mode == "relative" else 0
        crop_frames = 0 if options.crop == "none" else info.frames
        keypoint_frames = info.frames if start == "best" else min(start + 1, info.frames) if start else 0
        analysis_total = crop_frames + keypoint_frames
        progress = ProgressModel(
            [
                ("analysing", analysis_total),
                ("rendering", expected),
                ("encoding", encoding_units(expected, fmt, options.loop)),
            ],
            on_progress,
            self.costs,
        )
        h, w = self.model.frame_shape
        decode, infer, encode, crop = _Stage(), _Stage(), _Stage(), _Stage()

        def analysing(done: int) -> None:
            progress.update("analysing", done, max(analysis_total, done))

        with crop.timed():
            framing = plan_framing(
                source_image,
                driving_path,
                info,
                options.crop,
                options.paste_back,
                should_cancel,
                lambda done, _expected: analysing(done),
            )
        source = to_tensor(framing.source_input(h, w)[None], self.device)

        with infer.timed():
            state = self.prepare_source(
                source,
                precision=options.precision,
                mode=options.mode,
                adapt_scale=options.adapt_scale,
                background_motion=options.background_motion,
            )
            if framing.pastes:
                framing.prepare_paste(self.still(state))

        kp_all: dict[str, torch.Tensor] = {}  # (T, K, 2) / (T, K, 2, 2) of the first T driving frames
        if start != 0:
            with decode.timed():
                stop_at = None if start == "best" else start
                kp_all = self._driving_keypoints(
                    framing.driving_frames(h, w),
                    options.batch_size,
                    stop_at,
                    lambda seen: analysing(crop_frames + seen),
                )
            points = self.adapter.points(kp_all)
            if start == "best":
                start = best_start_frame(
                    self.adapter.points(state.kp_source)[0].cpu().numpy(), points.cpu().numpy()
                )
            elif start >= len(points):
                last = len(points) - 1
                raise RenderError(f"driving_start {start} is past the last frame ({last})", "invalid_option")
            state.kp_initial = {k: v[start : start + 1] for k, v in kp_all.items()}
        known_frames = len(self.adapter.points(kp_all)) if kp_all else 0  # not computed again

        frame_w, frame_h = framing.output_size(w, h)
        output = RenderOutput(
            out_path,
            fmt,
            (frame_w, frame_h),
            output_size(frame_w, frame_h, options.size, fmt),
            info.fps / step,
            options.loop,
            driving_path if options.audio and info.has_audio else None,
            (Path(poster_path) if poster_path else out_path.with_name("poster.jpg"))
            if options.poster
            else None,
            options.poster_frame,
        )
        writer = _BackgroundWriter(lambda batch: output.write(framing.finish(batch)))
        done = 0
        total = expected
        try:
            progress.update("rendering", 0, total)
            batches = _prefetch(_batched(framing.driving_frames(h, w, step), options.batch_size))
            while True:
                with decode.timed():
                    batch = next(batches, None)
                if batch is None:
                    break
                if should_cancel is not None and should_cancel():
                    raise RenderCanceled("the job was canceled")
                with infer.timed():
                    end = done + len(batch)
                    known = None
                    if (end - 1) * step < known_frames:
                        known = {k: v[done * step : end * step : step] for k, v in kp_all.items()}
                    out = self.animate_with_motion(state, to_tensor(batch, self.device), known)
                    rendered = model_frames(out) if framing.pastes else to_frames(out["prediction"])
                with encode.timed():
                    writer.put(rendered)
                done += len(batch)
                total = max(total, done)
                progress.update("rendering", done, total)
            if done == 0:
                raise RenderError(f"{driving_path.name} has no decodable frame", "invalid_video")
            with encode.timed():
                writer.finish()
                summary = output.finish(lambda units, of: progress.update("encoding", units, of))
        except BaseException:
            writer.abort()
            output.abort()
            raise
        progress.finish()

        return RenderResult(
            frames=summary.frames,
            fps=summary.fps,
            width=summary.width,
            height=summary.height,
            audio=summary.audio,
            driving_start=start,
            precision=options.precision,
            format=summary.format,
            mime_type=summary.mime_type,
            bytes=summary.bytes,
            loop=summary.loop,
            poster=summary.poster,
            timings={
                "decode": round(decode.seconds, 4),
                "inference": round(infer.seconds, 4),
                "encode": round(encode.seconds, 4),
                "crop": round(crop.seconds, 4),
                "total": round(time.perf_counter() - started, 4),
            },
        )


def _runtime_adapter(
    model: AnimationModel | TPSMModel,
    device: str,
    runtime: str,
    cache_dir: Path | None,
    on_converted: Callable[[int, int], None] | None,
) -> ModelAdapter:
    if runtime == "torch":
        return model_adapter(model, device)
    if runtime != "openvino":
        raise RenderError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}", "invalid_option")
    if device != "cpu":
        raise RenderError("the openvino runtime runs on the CPU only", "invalid_option")
    if cache_dir is None:
        raise RenderError(
            "the openvino runtime needs a cache folder for its converted models", "invalid_option"
        )
    from worker.openvino_runtime import OpenVinoAdapter

    return OpenVinoAdapter(model, cache_dir, on_converted)
