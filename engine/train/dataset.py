"""Training data: pairs of frames from the same video, decoded once and kept in memory as uint8.

A data folder holds videos (any container ffmpeg reads), folders of frames (PNG/JPEG, sorted by
name) and still photos. Each video is decoded once at the training size; an epoch visits every
video and photo `num_repeats` times, each visit drawing two random frames of a video, or two random
views of a photo (see `Augmentation.affine`).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from engine.errors import RenderError
from engine.layers.blocks import coordinate_grid
from engine.media.video_io import load_image, read_frames, resize_image

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif"}
FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


class DataError(ValueError):
    """The data folder cannot be used for training or evaluation; the message says why."""


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied identically to both frames of a pair (time flip swaps them)."""

    horizontal_flip: bool = True
    time_flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1
    degrees: float = 0.0
    scale: float = 0.0
    translate: float = 0.0

    @property
    def affine(self) -> bool:
        """Random rotation, zoom and shift of the frame (one per pair; one per view of a photo)."""
        return bool(self.degrees or self.scale or self.translate)

    @classmethod
    def from_config(cls, params: dict | None) -> "Augmentation":
        """From `augmentation_params`: the published flip_param and jitter_param, and our affine_param
        (degrees, scale, translate: uniform ranges +-degrees, 1 +- scale, +- translate of the half
        width). None disables all."""
        if params is None:
            return cls(False, False, 0.0, 0.0, 0.0, 0.0)
        flip = params.get("flip_param") or {}
        jitter = params.get("jitter_param") or {}
        affine = params.get("affine_param") or {}

        def amount(section: dict, name: str, key: str, most: float) -> float:
            value = section.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= most:
                raise DataError(f"augmentation_params.{name}.{key} must be a number in [0, {most:g}]")
            return float(value)

        return cls(
            horizontal_flip=bool(flip.get("horizontal_flip", False)),
            time_flip=bool(flip.get("time_flip", False)),
            brightness=amount(jitter, "jitter_param", "brightness", 1),
            contrast=amount(jitter, "jitter_param", "contrast", 1),
            saturation=amount(jitter, "jitter_param", "saturation", 1),
            hue=amount(jitter, "jitter_param", "hue", 0.5),
            degrees=amount(affine, "affine_param", "degrees", 180),
            scale=amount(affine, "affine_param", "scale", 0.9),
            translate=amount(affine, "affine_param", "translate", 1),
        )


def list_stills(root: str | Path) -> list[Path]:
    """The photos directly inside `root`, sorted by name."""
    return sorted(p for p in Path(root).iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)


def list_sequences(root: str | Path, stills: bool = False) -> list[Path]:
    """The videos and frame folders directly inside `root` (and, with `stills`, photos), by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    found = []
    for entry in sorted(root.iterdir()):
        if (
            entry.is_file()
            and entry.suffix.lower() in VIDEO_SUFFIXES
            or entry.is_dir()
            and any(p.suffix.lower() in FRAME_SUFFIXES for p in entry.iterdir())
        ):
            found.append(entry)
    if stills:
        found = sorted(found + list_stills(root))
    if not found:
        raise DataError(f"no videos or frame folders in {root}")
    return found


def decode_sequence(path: Path, height: int, width: int) -> np.ndarray:
    """(T, height, width, 3) uint8 frames of a video file or a folder of frames."""
    try:
        if path.is_file() and path.suffix.lower() in FRAME_SUFFIXES:
            return resize_image(_center_crop(load_image(path), height / width), height, width)[None]
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
            frames = [resize_image(load_image(p), height, width) for p in files]
        else:
            frames = list(read_frames(path, height, width))
    except RenderError as exc:
        raise DataError(f"{path.name}: {exc}") from exc
    if len(frames) < 2:
        raise DataError(f"{path.name}: needs at least 2 frames, has {len(frames)}")
    return np.stack(frames)


def _center_crop(image: np.ndarray, aspect: float) -> np.ndarray:
    """The largest centred part of `image` whose height / width is `aspect`."""
    h, w = image.shape[:2]
    if h > w * aspect:
        top = (h - round(w * aspect)) // 2
        return image[top : top + round(w * aspect)]
    left = (w - round(h / aspect)) // 2
    return image[:, left : left + round(h / aspect)]


def _to_tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() / 255


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    weights = image.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (image * weights).sum(dim=0, keepdim=True)


def _rotate_hue(image: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotate chroma in YIQ space by `turns` of a full circle (luma is kept)."""
    to_yiq = image.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle = 2 * math.pi * turns
    c, s = math.cos(angle), math.sin(angle)
    rotation = image.new_tensor([[1, 0, 0], [0, c, -s], [0, s, c]])
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    return torch.einsum("ij,jhw->ihw", matrix, image)


class FramePairs(Dataset):
    """Items are {"source", "driving"}: (3, H, W) float tensors in [0, 1] from one random video.

    A photo is a video of one frame: its pair is two independent random affine views of it, a
    still scene seen by a moving camera, which brings new faces and backgrounds to a small set of
    clips. With affine augmentation the frames are cached at twice the size and each view is
    warped there and then averaged down 2x2, so that resampling does not blur the targets.
    """

    def __init__(
        self,
        root: str | Path,
        frame_shape: tuple[int, int],
        num_repeats: int = 1,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ):
        self.augmentation = augmentation or Augmentation.from_config(None)
        self.paths = list_sequences(root, stills=True)
        photos = [p.name for p in list_stills(root)]
        if photos and not self.augmentation.affine:
            raise DataError(
                f"photos ({', '.join(photos[:3])}{', ...' if len(photos) > 3 else ''}) need "
                "augmentation_params.affine_param to make two views of them"
            )
        self.supersample = 2 if self.augmentation.affine else 1
        height, width = frame_shape
        self.videos = [
            decode_sequence(p, height * self.supersample, width * self.supersample) for p in self.paths
        ]
        self.num_repeats = num_repeats
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.videos) * self.num_repeats

    def _jitter(self, frames: list[torch.Tensor]) -> list[torch.Tensor]:
        aug, rng = self.augmentation, self.rng
        brightness = rng.uniform(1 - aug.brightness, 1 + aug.brightness)
        contrast = rng.uniform(1 - aug.contrast, 1 + aug.contrast)
        saturation = rng.uniform(1 - aug.saturation, 1 + aug.saturation)
        hue = rng.uniform(-aug.hue, aug.hue)
        out = []
        for image in frames:
            image = image * brightness
            mean = _grayscale(image).mean()
            image = (image - mean) * contrast + mean
            gray = _grayscale(image)
            image = (image - gray) * saturation + gray
            if hue:
                image = _rotate_hue(image, hue)
            out.append(image.clamp(0, 1))
        return out

    def _affine_grid(self, height: int, width: int) -> torch.Tensor:
        """(1, H, W, 2) sampling grid of one random rotation, zoom and shift about the centre."""
        aug, rng = self.augmentation, self.rng
        angle = math.radians(rng.uniform(-aug.degrees, aug.degrees))
        zoom = rng.uniform(1 - aug.scale, 1 + aug.scale)
        shift = torch.tensor(rng.uniform(-aug.translate, aug.translate, size=2), dtype=torch.float32)
        half = torch.tensor([(width - 1) / 2, (height - 1) / 2])  # rotate in pixels, not in [-1, 1]
        rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pixels = coordinate_grid(height, width, half) * half
        return ((pixels @ rotation.T / zoom) / half + shift).unsqueeze(0)

    def _view(self, frame: torch.Tensor, grid: torch.Tensor | None) -> torch.Tensor:
        """The (3, H, W) training frame of a cached frame, through `grid` when given."""
        if grid is not None:
            frame = F.grid_sample(
                frame[None], grid, mode="bilinear", padding_mode="reflection", align_corners=True
            )[0]
        return F.avg_pool2d(frame[None], self.supersample)[0] if self.supersample > 1 else frame

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        video = self.videos[index % len(self.videos)]
        first, second = np.sort(self.rng.choice(len(video), size=2, replace=True))
        frames = [video[first], video[second]]
        aug = self.augmentation
        if aug.horizontal_flip and self.rng.random() < 0.5:
            frames = [f[:, ::-1] for f in frames]
        if aug.time_flip and self.rng.random() < 0.5:
            frames = frames[::-1]
        tensors = [_to_tensor(f) for f in frames]
        if aug.affine:
            height, width = tensors[0].shape[1:]
            if len(video) == 1:
                grids = [self._affine_grid(height, width) for _ in tensors]
            else:
                grids = [self._affine_grid(height, width)] * 2
            tensors = [self._view(t, g) for t, g in zip(tensors, grids, strict=True)]
        if aug.brightness or aug.contrast or aug.saturation or aug.hue:
            tensors = self._jitter(tensors)
        return {"source": tensors[0], "driving": tensors[1]}
