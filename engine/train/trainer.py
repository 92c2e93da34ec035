"""The training loop: Adam with step learning-rate milestones, checkpoints, resume, logs and pictures.

A run folder holds `log.tsv` (mean losses every `log_every` steps), `pictures/step-N.png` (source,
driving with keypoints, deformed source, prediction), `checkpoints/step-N.pth.tar` (the published
layout plus our config, frame size and optimizer states, for resume) and, at the end,
`model.pth.tar` (weights only, what the engine and `animate render` load).
"""

import copy
import itertools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from engine import CheckpointError, save_checkpoint
from engine.families.fomm import FirstOrderModel, build_model
from engine.train.dataset import Augmentation, FramePairs
from engine.train.discriminator import MultiScaleDiscriminator
from engine.train.losses import (
    ImagePyramid,
    discriminator_gan_loss,
    equivariance_losses,
    feature_matching_loss,
    generator_gan_loss,
    reconstruction_loss,
)
from engine.train.transforms import RandomWarp
from engine.train.vgg19 import load_vgg19

DEFAULT_TRAIN_PARAMS = {
    "num_epochs": 100,
    "num_repeats": 1,
    "epoch_milestones": [],
    "lr_generator": 2.0e-4,
    "lr_discriminator": 2.0e-4,
    "lr_kp_detector": 2.0e-4,
    "lr_gamma": 0.1,
    "batch_size": 8,
    "scales": [1, 0.5, 0.25, 0.125],
    "checkpoint_every": 500,
    "picture_every": 500,
    "log_every": 50,
    "batch_norm_batches": 100,
    "seed": 0,
    "transform_params": {"sigma_affine": 0.05, "sigma_tps": 0.005, "points_tps": 5},
    "loss_weights": {
        "generator_gan": 0,
        "discriminator_gan": 1,
        "feature_matching": [10, 10, 10, 10],
        "perceptual": [10, 10, 10, 10, 10],
        "reconstruction": 10,
        "equivariance_value": 10,
        "equivariance_jacobian": 10,
    },
}
MODEL_SECTIONS = ("common_params", "kp_detector_params", "generator_params")
# VGG-19 pools four times before relu5_1, so smaller images leave it nothing to see.
VGG_MIN_SIDE = 16


class TrainingError(ValueError):
    """A training config, data folder or checkpoint that cannot be used; the message says why."""


def _merged(defaults: dict, given: dict) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def read_training_config(path: str | Path) -> dict:
    """A YAML file in the published format: dataset_params, model_params, train_params."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TrainingError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model_params"), dict):
        raise TrainingError(f"config {path} has no model_params mapping")
    missing = [s for s in MODEL_SECTIONS if not isinstance(config["model_params"].get(s), dict)]
    if missing:
        raise TrainingError(f"config {path}: model_params lacks {', '.join(missing)}")
    shape = (config.get("dataset_params") or {}).get("frame_shape")
    if not (
        isinstance(shape, list) and len(shape) >= 2 and all(isinstance(v, int) and v >= 16 for v in shape[:2])
    ):
        raise TrainingError(f"config {path}: dataset_params.frame_shape must be [H, W, 3] with H, W >= 16")
    config["train_params"] = _merged(DEFAULT_TRAIN_PARAMS, config.get("train_params") or {})
    return config


def _keypoint_colours(count: int) -> np.ndarray:
    hues = np.arange(count) / max(count, 1)
    rgb = np.stack([np.abs(hues * 6 - 3) - 1, 2 - np.abs(hues * 6 - 2), 2 - np.abs(hues * 6 - 4)], axis=1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def draw_keypoints(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 with a small square at each (x, y) in [-1, 1] of the (K, 2) points."""
    out = image.copy()
    h, w = image.shape[:2]
    radius = max(1, h // 64)
    for colour, (x, y) in zip(_keypoint_colours(len(points)), points, strict=True):
        col, row = round((x + 1) / 2 * (w - 1)), round((y + 1) / 2 * (h - 1))
        out[max(row - radius, 0) : row + radius + 1, max(col - radius, 0) : col + radius + 1] = colour
    return out


def training_picture(batch: dict, kp_driving: dict, generated: dict, rows: int = 4) -> np.ndarray:
    """One row per sample: source | driving with keypoints | deformed source | prediction."""

    def image(t: torch.Tensor) -> np.ndarray:
        return (t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)

    lines = []
    for i in range(min(rows, batch["source"].shape[0])):
        driving = draw_keypoints(image(batch["driving"][i]), kp_driving["value"][i].detach().cpu().numpy())
        lines.append(
            np.concatenate(
                [
                    image(batch["source"][i]),
                    driving,
                    image(generated["deformed"][i]),
                    image(generated["prediction"][i]),
                ],
                axis=1,
            )
        )
    return np.concatenate(lines, axis=0)


class Trainer:
    """Owns the networks, optimizers and data of one run; `train()` runs to the last step."""

    def __init__(
        self,
        config: dict,
        data_dir: str | Path,
        run_dir: str | Path,
        vgg19: str | Path | None = None,
        device: str = "cpu",
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ):
        self.params = config["train_params"]
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.log = log
        seed = int(self.params["seed"])
        torch.manual_seed(seed)
        frame_shape = tuple(config["dataset_params"]["frame_shape"][:2])
        model_config = {k: copy.deepcopy(v) for k, v in config["model_params"].items() if k in MODEL_SECTIONS}
        try:
            # channels_last: the convolutions (three quarters of a step) ran 1.3x faster on CPU.
            self.model: FirstOrderModel = (
                build_model(model_config, frame_shape)
                .to(self.device, memory_format=torch.channels_last)
                .train()
            )
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from exc
        weights = self.params["loss_weights"]
        self.discriminator = None
        if weights["generator_gan"]:
            disc_params = {
                **config["model_params"]["common_params"],
                **config["model_params"].get("discriminator_params", {}),
            }
            self.discriminator = MultiScaleDiscriminator(**disc_params).to(self.device).train()
        self.vgg = load_vgg19(vgg19, str(self.device)) if vgg19 else None
        smallest = min(frame_shape) * min(self.params["scales"])
        if self.vgg is not None and smallest < VGG_MIN_SIDE:
            raise TrainingError(
                f"the perceptual loss needs every pyramid level >= {VGG_MIN_SIDE} px; the smallest is "
                f"{smallest:g} px (drop the smallest scales or train without --vgg19)"
            )
        self.pyramid = ImagePyramid(self.params["scales"], model_config["common_params"]["num_channels"])
        self.pyramid.to(self.device)
        self.dataset = FramePairs(
            data_dir,
            frame_shape,
            num_repeats=int(self.params["num_repeats"]),
            augmentation=Augmentation.from_config(config["dataset_params"].get("augmentation_params")),
            seed=seed,
        )
        self.batch_size = int(self.params["batch_size"])
        if len(self.dataset) < self.batch_size:
            raise TrainingError(
                f"{len(self.dataset)} items per epoch (videos x num_repeats) is less than one batch of "
                f"{self.batch_size}"
            )
        self.steps_per_epoch = len(self.dataset) // self.batch_size
        betas = (0.5, 0.999)
        self.optimizers = {
            "generator": torch.optim.Adam(
                self.model.generator.parameters(), self.params["lr_generator"], betas=betas
            ),
            "kp_detector": torch.optim.Adam(
                self.model.kp_detector.parameters(), self.params["lr_kp_detector"], betas=betas
            ),
        }
        if self.discriminator is not None:
            self.optimizers["discriminator"] = torch.optim.Adam(
                self.discriminator.parameters(), self.params["lr_discriminator"], betas=betas
            )
        self.base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in self.optimizers.items()}
        self.step = 0
        self.loader_seed = seed

    @property
    def total_steps(self) -> int:
        return int(self.params["num_epochs"]) * self.steps_per_epoch

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint this trainer wrote (weights, optimizers, step)."""
        path = Path(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # hostile or foreign files raise many types
            raise TrainingError(
                f"cannot resume from {path}: {str(exc).splitlines()[0] if str(exc) else exc}"
            ) from exc
        if not isinstance(data, dict) or not all(k in data for k in ("kp_detector", "generator")):
            raise TrainingError(f"cannot resume from {path}: not a training checkpoint")
        try:
            self.model.kp_detector.load_state_dict(data["kp_detector"])
            self.model.generator.load_state_dict(data["generator"])
            if self.discriminator is not None:
                if "discriminator" not in data:
                    raise TrainingError(f"cannot resume from {path}: it has no discriminator")
                self.discriminator.load_state_dict(data["discriminator"])
            for name, optimizer in self.optimizers.items():
                if f"optimizer_{name}" in data:
                    optimizer.load_state_dict(data[f"optimizer_{name}"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise TrainingError(f"cannot resume from {path}: {str(exc).splitlines()[0]}") from exc
        self.step = int(data.get("step", 0))

    def _set_learning_rates(self, epoch: int) -> None:
        decays = sum(1 for m in self.params["epoch_milestones"] if epoch >= m)
        factor = self.params["lr_gamma"] ** decays
        for name, optimizer in self.optimizers.items():
            for group, base in zip(optimizer.param_groups, self.base_lrs[name], strict=True):
                group["lr"] = base * factor

    def losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict, dict]:
        """The generator-side losses of one batch, and the keypoints and outputs they came from."""
        weights = self.params["loss_weights"]
        source, driving = batch["source"], batch["driving"]
        kp_source = self.model.kp_detector(source)
        kp_driving = self.model.kp_detector(driving)
        generated = self.model.generator(source, kp_source=kp_source, kp_driving=kp_driving)
        real = self.pyramid(driving)
        fake = self.pyramid(generated["prediction"])
        losses = {
            "reconstruction": reconstruction_loss(
                fake, real, self.vgg, weights["perceptual"], weights["reconstruction"]
            )
        }
        if self.discriminator is not None:
            kp = kp_driving["value"].detach()
            fake_scores = self.discriminator(fake, kp)
            real_scores = self.discriminator(real, kp)
            losses["generator_gan"] = generator_gan_loss(fake_scores, weights["generator_gan"])
            losses["feature_matching"] = feature_matching_loss(
                real_scores, fake_scores, weights["feature_matching"]
            )
        if weights["equivariance_value"] or weights["equivariance_jacobian"]:
            warp = RandomWarp.random(driving.shape[0], **self.params["transform_params"], device=self.device)
            kp_warped = self.model.kp_detector(warp.warp_frame(driving))
            value, jacobian = equivariance_losses(
                kp_driving, kp_warped, warp, weights["equivariance_value"], weights["equivariance_jacobian"]
            )
            losses["equivariance_value"] = value
            if "jacobian" in kp_driving:
                losses["equivariance_jacobian"] = jacobian
        return losses, kp_driving, generated

    def _on_device(self, batch: dict) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, memory_format=torch.channels_last) for k, v in batch.items()}

    def train_step(self, batch: dict) -> tuple[dict[str, float], dict, dict]:
        batch = self._on_device(batch)
        losses, kp_driving, generated = self.losses(batch)
        total = sum(losses.values())
        self.optimizers["generator"].zero_grad(set_to_none=True)
        self.optimizers["kp_detector"].zero_grad(set_to_none=True)
        total.backward()
        self.optimizers["generator"].step()
        self.optimizers["kp_detector"].step()
        values = {k: float(v.detach()) for k, v in losses.items()}
        if self.discriminator is not None:
            kp = kp_driving["value"].detach()
            fake_scores = self.discriminator(self.pyramid(generated["prediction"].detach()), kp)
            real_scores = self.discriminator(self.pyramid(batch["driving"]), kp)
            loss = discriminator_gan_loss(
                real_scores, fake_scores, self.params["loss_weights"]["discriminator_gan"]
            )
            self.optimizers["discriminator"].zero_grad(set_to_none=True)
            loss.backward()
            self.optimizers["discriminator"].step()
            values["discriminator_gan"] = float(loss.detach())
        return values, kp_driving, generated

    @torch.no_grad()
    def recalibrate_batch_norm(self, batches: int) -> None:
        """Batch-norm statistics averaged evenly over `batches` training batches of the final weights.

        The running statistics of training are an exponential average dominated by the last few
        batches, whose weights have moved on since; on the starter model, exact statistics lowered
        the held-out L1 by 1-3% (weights/README.md).
        """
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms or batches <= 0:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
        generator = torch.Generator().manual_seed(self.loader_seed)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, generator=generator)
        self.model.train()
        for batch in itertools.islice(loader, batches):
            batch = self._on_device(batch)
            source, driving = batch["source"], batch["driving"]
            kp_source, kp_driving = self.model.kp_detector(source), self.model.kp_detector(driving)
            self.model.generator(source, kp_source=kp_source, kp_driving=kp_driving)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

    def save(self, path: Path, with_optimizers: bool = True) -> None:
        extra: dict = {"step": self.step, "epoch": self.step // self.steps_per_epoch}
        if with_optimizers:
            extra.update({f"optimizer_{n}": o.state_dict() for n, o in self.optimizers.items()})
            if self.discriminator is not None:
                extra["discriminator"] = self.discriminator.state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, self.model, **extra)

    def train(self, steps: int | None = None) -> dict:
        """Train until `steps` (default: num_epochs x steps per epoch); returns the last mean losses."""
        last_step = steps if steps is not None else self.total_steps
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / "log.tsv"
        every = {k: max(1, int(self.params[k])) for k in ("log_every", "checkpoint_every", "picture_every")}
        generator = torch.Generator().manual_seed(self.loader_seed + self.step)
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator
        )
        window: dict[str, list[float]] = {}
        means: dict[str, float] = {}
        started = time.monotonic()
        first_step = self.step
        bar = sys.stderr.isatty()
        while self.step < last_step:
            for batch in loader:
                if self.step >= last_step:
                    break
                epoch = self.step // self.steps_per_epoch
                self._set_learning_rates(epoch)
                values, kp_driving, generated = self.train_step(batch)
                self.step += 1
                for key, value in values.items():
                    window.setdefault(key, []).append(value)
                if not all(math.isfinite(v) for v in values.values()):
                    raise TrainingError(f"step {self.step}: a loss is not finite ({values})")
                if self.step % every["picture_every"] == 0 or self.step == last_step:
                    picture = training_picture(batch, kp_driving, generated)
                    (self.run_dir / "pictures").mkdir(exist_ok=True)
                    Image.fromarray(picture).save(self.run_dir / "pictures" / f"step-{self.step:07d}.png")
                if self.step % every["checkpoint_every"] == 0 or self.step == last_step:
                    self.save(self.run_dir / "checkpoints" / f"step-{self.step:07d}.pth.tar")
                elapsed = time.monotonic() - started
                if bar:
                    done = self.step - first_step
                    eta = elapsed / done * (last_step - self.step)
                    total = sum(v[-1] for v in window.values())
                    sys.stderr.write(
                        f"\rtraining step {self.step}/{last_step}  loss {total:.4f}  ETA {eta:6.0f}s "
                    )
                if self.step % every["log_every"] == 0 or self.step == last_step:
                    means = {k: float(np.mean(v)) for k, v in window.items()}
                    window = {}
                    new = not log_path.exists()
                    with log_path.open("a") as log_file:
                        if new:
                            log_file.write("\t".join(["step", "epoch", "seconds", "total", *means]) + "\n")
                        fields = [self.step, epoch, f"{elapsed:.1f}", f"{sum(means.values()):.5f}"]
                        log_file.write(
                            "\t".join(map(str, fields + [f"{v:.5f}" for v in means.values()])) + "\n"
                        )
                    if not bar:
                        summary = " ".join(f"{k}={v:.4f}" for k, v in means.items())
                        self.log(f"step {self.step}/{last_step} epoch {epoch} {elapsed:.0f}s {summary}")
        if bar:
            sys.stderr.write("\n")
        self.recalibrate_batch_norm(int(self.params["batch_norm_batches"]))
        self.save(self.run_dir / "model.pth.tar", with_optimizers=False)
        return {"steps": self.step, "seconds": time.monotonic() - started, "losses": means}
