"""Loading a model: the checkpoint (a file, or a folder of files) is recognised by one family, which
loads it.

A checkpoint is untrusted input: files are read with `weights_only=True` (no code runs; torch's own
warnings about the pickle are kept off stderr), memory-mapped where their format allows (so
optimizer states and other unused parts are never read), every tensor's layout checked against its
storage (a stride-0 tensor may claim billions of parameters it does not hold), and every part a
family uses is checked key by key and shape by shape before any weight is copied.
"""

import copy
import pickle
import re
import warnings
import zipfile
from functools import cached_property
from pathlib import Path

import torch
import yaml
from torch import nn

from engine.state_dict import CheckpointError, check_tensors

DEFAULT_FRAME_SHAPE = (256, 256)


TORCH_BOILERPLATE = ("Weights only load failed", "Check the documentation", "Please file an issue")


def _refusal_reason(exc: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler found, without torch's advice to load the file unsafely."""
    paragraphs = [part.strip() for part in re.split(r"\n\s*\n", str(exc)) if part.strip()]
    found = [part for part in paragraphs if not part.startswith(TORCH_BOILERPLATE)]
    return " ".join(found[0].split()) if found else type(exc).__name__


def read_torch_file(path: Path) -> object:
    """torch.load with no code run and zip files memory-mapped, every tensor a plain array
    (state_dict.check_tensors); CheckpointError for anything unreadable or refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the pickle are not the user's business
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        reason = _refusal_reason(exc)
        raise CheckpointError(
            f"{path.name} is not a readable torch checkpoint of tensors and plain data ({reason})"
        ) from exc
    except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a readable torch checkpoint ({exc})") from exc
    except Exception as exc:  # the unpickler raises many types for hostile or foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path.name} is not a readable torch checkpoint ({reason})") from exc
    check_tensors(data, path.name)
    return data


class Checkpoint:
    """A checkpoint path as the families see it while recognising and loading it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"checkpoint not found: {self.path}")

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()

    @cached_property
    def data(self) -> dict:
        """A file's top-level dict, read once; CheckpointError for a folder or anything else."""
        if self.is_folder:
            raise CheckpointError(f"{self.path} is a folder, not a checkpoint file")
        data = read_torch_file(self.path)
        if not isinstance(data, dict):
            raise CheckpointError(
                f"{self.path.name} holds a {type(data).__name__}, not a dict of state dicts"
            )
        return data

    def has_any(self, keys: tuple[str, ...]) -> bool:
        """Whether the file's top-level dict has any of `keys` (False for a folder)."""
        return not self.is_folder and any(key in self.data for key in keys)

    def parts(self, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, dict]:
        """The file's state dicts by part, each checked to hold only tensors; anything else in the
        file is never read."""
        parts = {}
        for part in required + optional:
            state = self.data.get(part)
            if state is None and part in optional:
                continue
            if not isinstance(state, dict):
                raise CheckpointError(f"{self.path.name} has no {part!r} state dict")
            bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise CheckpointError(f"{self.path.name}: {part}.{bad[0]} is not a tensor")
            parts[part] = state
        return parts


def merge_config(base: dict, override: dict) -> dict:
    """`base` with `override`'s entries, nested mappings merged."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"config {path} is not a mapping")
    return data


def read_config(path: str | Path) -> dict:
    """`model_params` from a YAML file in the published config format (or the bare mapping)."""
    data = read_yaml(path)
    return data.get("model_params", data)


def stored_frame_shape(checkpoint: Checkpoint, config: dict | str | Path | None) -> tuple[int, int]:
    """The file's own frame size, else the config file's `dataset_params.frame_shape`, else 256x256.

    Published checkpoints do not store it, and some (ted-384) have the same tensors as others
    trained at 256x256.
    """
    frame_shape = checkpoint.data.get("frame_shape")
    if frame_shape is None and isinstance(config, (str, Path)):
        frame_shape = (read_yaml(config).get("dataset_params") or {}).get("frame_shape")
    if frame_shape is None:
        frame_shape = DEFAULT_FRAME_SHAPE
    if not (
        isinstance(frame_shape, (list, tuple))
        and len(frame_shape) >= 2
        and all(isinstance(v, int) and 16 <= v <= 4096 for v in frame_shape[:2])
    ):
        raise CheckpointError(f"{checkpoint.path.name}: invalid frame_shape {frame_shape!r}")
    return tuple(frame_shape[:2])


def load_checkpoint(
    path: str | Path, config: dict | str | Path | None = None, device: str = "cpu"
) -> nn.Module:
    """Load a published or self-trained checkpoint of any registered family into an eval-mode model.

    `config` (a mapping or a YAML path in the family's published config format) overrides what the
    tensors cannot tell. The model is the family's own object: its networks under their published
    names, `family` its family's name and `frame_shape` the (height, width) it animates at.
    """
    from engine.families import family_for

    checkpoint = Checkpoint(path)
    identity = file_identity(checkpoint.path)
    model = family_for(checkpoint).load(checkpoint, config)
    # what converted copies of it are found by (engine/runtimes/openvino.py); None if it changed meanwhile
    model.checkpoint_identity = identity if identity == file_identity(checkpoint.path) else None
    return model.to(device).eval()


def file_identity(path: Path) -> str | None:
    """A file's path, size, modification time and inode: the same string while the file is unchanged;
    None for a folder."""
    if path.is_dir():
        return None
    stat = path.stat()
    return f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns} {stat.st_dev}:{stat.st_ino}"


def save_checkpoint(path: str | Path, model: nn.Module, **extra) -> None:
    """Write the published layout (a state dict per network) plus our config and frame size, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            **{name: module.state_dict() for name, module in model.named_children()},
            "config": model.config,
            "frame_shape": list(model.frame_shape),
            **extra,
        },
        tmp,
    )
    tmp.replace(path)
