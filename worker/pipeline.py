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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from worker.errors import RenderCanceled, RenderError
from worker.models import AnimationModel, Generator, SourceFeatures, normalize_kp
from worker.models.motion_transfer import convex_hull_area
from worker.optimize import low_precision_generator, prepare_for_inference
from worker.output import FORMATS, RenderOutput, encoding_units, frame_step, output_size
from worker.progress import ProgressCallback, ProgressModel, StageCosts
from worker.subject.framing import DEFAULT_CROP, check_framing, plan_framing
from worker.subject.paste import ModelFrame
from worker.video_io import VideoInfo, probe_video

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
    format: str = "mp4"  # mp4, webm, gif or webp: see worker/output.py
    loop: bool = False  # forward then backward, seamless on repeat (no audio)
    poster: bool = False  # also write a JPEG of frame `poster_frame`
    poster_frame: int = 0

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
        if self.format not in FORMATS:
            raise RenderError(
                f"format must be one of {', '.join(FORMATS)}, not {self.format!r}", "invalid_option"
            )
        if not isinstance(self.loop, bool) or not isinstance(self.poster, bool):
            raise RenderError("loop and poster must be true or false", "invalid_option")
        if (
            isinstance(self.poster_frame, bool)
            or not isinstance(self.poster_frame, int)
            or self.poster_frame < 0
        ):
            raise RenderError("poster_frame must be a frame index >= 0", "invalid_option")


@dataclass
class RenderResult:
    frames: int
    fps: float
    width: int
    height: int
    audio: bool
    driving_start: int
    precision: str
    format: str = "mp4"
    mime_type: str = "video/mp4"
    bytes: int = 0
    loop: bool = False
    poster: str | None = None  # the poster's file name, next to the result unless placed elsewhere
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


def model_frames(out: dict[str, torch.Tensor]) -> list[ModelFrame]:
    """The generator's output as numpy frames with their motion, for paste-back."""
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


@dataclass
class SourceState:
    """What a job computes once from its source image, then reuses for every driving frame."""

    features: SourceFeatures
    kp_source: dict[str, torch.Tensor]
    precision: str = "fp32"
    relative: bool = True
    adapt_scale: bool = True
    kp_initial: dict[str, torch.Tensor] | None = None  # taken from the first frame when None


class Renderer:
    """Holds a loaded model, prepared for inference, and renders jobs with it.

    One instance per worker process. It takes ownership of `model`: batch norm is folded into the
    convolutions and the weights are made channels-last, in place.
    """

    def __init__(self, model: AnimationModel, device: str = "cpu"):
        self.model = prepare_for_inference(model, device)
        self.device = device
        self.costs = StageCosts()  # seconds per frame of each stage, for progress; learnt job by job
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

    def _generate(self, state: SourceState, kp_norm: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = kp_norm["value"].shape[0]
        kp_source = {k: v.expand(n, *v.shape[1:]) for k, v in state.kp_source.items()}
        generator = self.generator(state.precision)
        return generator.animate(state.features.expand(n), kp_source, kp_norm, maps=False)

    @torch.inference_mode()
    def animate_with_motion(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The generator's output for driving frames (N, 3, H, W) in [0, 1]: `prediction` (N, 3, H, W)
        in [0, 1] and, for models with dense motion, `deformation` and `occlusion_map`.

        `kp_driving`: the frames' keypoints when an earlier pass over the video already has them.
        """
        if kp_driving is None:
            kp_driving = self.keypoints(frames)
        if state.kp_initial is None:
            state.kp_initial = {k: v[:1] for k, v in kp_driving.items()}
        kp_norm = normalize_kp(
            state.kp_source,
            kp_driving,
            state.kp_initial,
            adapt_movement_scale=state.adapt_scale and state.relative,
            use_relative_movement=state.relative,
            use_relative_jacobian=state.relative,
        )
        return self._generate(state, kp_norm)

    @torch.inference_mode()
    def animate_batch(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Animated frames (N, 3, H, W) in [0, 1] for driving frames (N, 3, H, W) in [0, 1]."""
        return self.animate_with_motion(state, frames, kp_driving)["prediction"]

    @torch.inference_mode()
    def still(self, state: SourceState) -> ModelFrame:
        """The source rendered with no motion (driving keypoints = the source's): what paste-back
        compares every frame with."""
        return model_frames(self._generate(state, state.kp_source))[0]

    @torch.inference_mode()
    def _driving_keypoints(
        self,
        frames: Iterator[np.ndarray],
        batch_size: int,
        stop_at: int | None,
        on_frames: Callable[[int], None] | None = None,
    ):
        """Keypoints (T, K, 2) and jacobians of the driving frames, up to and including stop_at."""
        values, jacobians = [], []
        seen = 0
        for batch in _batched(frames, batch_size):
            kp = self.keypoints(to_tensor(batch, self.device))
            values.append(kp["value"])
            if "jacobian" in kp:
                jacobians.append(kp["jacobian"])
            seen += len(batch)
            if on_frames is not None:
                on_frames(seen)
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
        poster_path: str | Path | None = None,
    ) -> RenderResult:
        """Animate `source_image` ((H, W, 3) uint8) by the video at `driving_path` into `out_path`.

        The video (and with `options.poster` the JPEG at `poster_path`, by default poster.jpg next
        to the video) appear only when complete; on any failure nothing is left there.
        """
        options = options or RenderOptions()
        options.validate()
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
        progress = ProgressModel(
            [
                ("analysing", crop_frames + keypoint_frames),
                ("rendering", expected),
                ("encoding", encoding_units(expected, fmt, options.loop)),
            ],
            on_progress,
            self.costs,
        )
        analysis_total = crop_frames + keypoint_frames
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
                relative=options.mode == "relative",
                adapt_scale=options.adapt_scale,
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
            if start == "best":
                start = best_start_frame(
                    state.kp_source["value"][0].cpu().numpy(), kp_all["value"].cpu().numpy()
                )
            elif start >= len(kp_all["value"]):
                last = len(kp_all["value"]) - 1
                raise RenderError(f"driving_start {start} is past the last frame ({last})", "invalid_option")
            state.kp_initial = {k: v[start : start + 1] for k, v in kp_all.items()}
        known_frames = len(kp_all["value"]) if kp_all else 0  # their keypoints are not computed again

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
