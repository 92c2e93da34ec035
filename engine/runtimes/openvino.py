"""The OpenVINO runtime for CPU workers (RUNTIME=openvino, or auto where it measures faster;
`animate render --runtime`): a model adapter for the Renderer.

The model's graphs (engine/export) are converted once and cached on disk, keyed by the model's
content, the OpenVINO version, the family's graph version and the frame size; later loads find
them by the checkpoint file's identity (an alias) and read the cached IR. Each graph is compiled on
first use for the batch size asked, and a smaller batch (the last of a video) is padded up to a size
already compiled rather than compiling another. int8 graphs (engine/export/quantize.py) sit in the
entry's `int8/`.

What is cached is run, so the cache is trusted no more than it must be: its folder is created
private (0700) and must belong to this user (else refused); one found writable by others is
emptied, as anything in it may have been planted. Each entry records the sha256 of its files when
it is converted (written before the entry appears, renamed into place whole), and the blobs
OpenVINO compiles into it when they are written; an entry whose files no longer match is converted
again with a warning (found by its alias or by its content), and a compiled blob that does not
match is removed (OpenVINO compiles it again).
"""

import hashlib
import json
import logging
import os
import shutil
import stat
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contract.options import AnimationOptions
from engine.errors import RenderError
from engine.export import BATCH, GraphSet
from engine.export.files import MANIFEST, ConversionCallback, export_graphs, file_digest
from engine.export.graphs import manifest_source_shapes
from engine.export.openvino_ir import OPENVINO_PRECISIONS, compile_graph, cpu_has_bf16, import_openvino
from engine.export.quantize import INT8, QUANTIZED_GRAPHS
from engine.families.adapter import SourceState, frame_keypoints
from engine.families.family import ModelFamily

log = logging.getLogger("worker")
PRIVATE = 0o700
DIGESTS = "digests.json"  # an entry's files and their sha256, recorded at conversion
COMPILED = "compiled"  # OpenVINO's compiled blobs (its CACHE_DIR), in each entry
COMPILED_DIGESTS = "compiled.json"  # the blobs and their sha256, recorded once written
ALIASES = "by-file"  # the cache's folder of aliases: a checkpoint file's identity -> its entry


def model_digest(model: nn.Module) -> str:
    """sha256 of the model as loaded (before folding and fusing): every tensor, the config and the
    frame size."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(model.config, sort_keys=True).encode())
    digest.update(json.dumps(list(model.frame_shape)).encode())
    return digest.hexdigest()


def cache_entry(cache_dir: Path, graphs: GraphSet, digest: str) -> Path:
    """The folder of one model's converted graphs. The graphs' inputs are part of the key: the same
    weights can make graphs with other inputs (TPSMM's `avd` only where its AVD network is trained)."""
    h, w = graphs.frame_shape
    inputs = json.dumps({name: [spec.name for spec in graph.inputs] for name, graph in graphs.graphs.items()})
    key = (
        f"{digest} {import_openvino().get_version()} {graphs.family} v{graphs.version} {h}x{w} batch-dynamic"
        f" {inputs}"
    )
    return cache_dir / f"{graphs.family}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def private_cache_dir(cache_dir: Path) -> Path:
    """`cache_dir`, created private (0700); RenderError when it belongs to another user. One found
    open to others is made private, and emptied first if others could write to it."""
    cache_dir.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
    found = cache_dir.stat()  # through a symlink: the folder really used
    if found.st_uid != os.geteuid():
        message = (
            f"the model cache {cache_dir} belongs to user {found.st_uid}, not to this one ({os.geteuid()})"
        )
        raise RenderError(message, "model_cache")
    mode = stat.S_IMODE(found.st_mode)
    if mode & 0o022:
        log.warning(
            "the model cache %s was writable by others (%o): its contents are removed", cache_dir, mode
        )
        for entry in cache_dir.iterdir():
            _remove(entry)
    if mode != PRIVATE:
        cache_dir.chmod(PRIVATE)
    return cache_dir


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _digests(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    names = names if names is not None else sorted(p.name for p in folder.iterdir() if p.is_file())
    return {name: file_digest(folder / name) for name in names}


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    partial.replace(path)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def cache_problem(folder: Path) -> str | None:
    """Why a converted entry is not as it was converted (a file changed, missing or added), or None."""
    recorded = _read_json(folder / DIGESTS)
    if recorded is None:
        return "has no readable record of its files' digests"
    present = sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.name not in (DIGESTS, COMPILED_DIGESTS)
    )
    if present != sorted(recorded):
        return f"holds {', '.join(present)} where {', '.join(sorted(recorded))} were converted"
    changed = [name for name, digest in _digests(folder, present).items() if digest != recorded[name]]
    return f"has {', '.join(changed)} changed since its conversion" if changed else None


def verify_compiled(folder: Path) -> None:
    """Remove the compiled blobs whose digests were not recorded when they were written."""
    blobs = folder / COMPILED
    if not blobs.is_dir():
        return
    recorded = _read_json(folder / COMPILED_DIGESTS) or {}
    for blob in sorted(blobs.iterdir()):
        if not blob.is_file() or recorded.get(blob.name) != file_digest(blob):
            log.warning("the compiled blob %s in %s does not match its record: removed", blob.name, folder)
            _remove(blob)


def record_compiled(folder: Path) -> None:
    """Record the digests of the compiled blobs written since the last record."""
    blobs = folder / COMPILED
    if not blobs.is_dir():
        return
    recorded = _read_json(folder / COMPILED_DIGESTS) or {}
    new = [p.name for p in blobs.iterdir() if p.is_file() and p.name not in recorded]
    if new:
        _write_json(folder / COMPILED_DIGESTS, {**recorded, **_digests(blobs, new)})


def convert_into(
    folder: Path, graphs: GraphSet, digest: str, on_converted: ConversionCallback | None
) -> None:
    """Convert `graphs` and record their digests in a staging folder, then rename it to `folder`
    whole; another process converting the same entry at the same time may win the rename."""
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}.converting")
    _remove(staging)
    try:
        export_graphs(
            graphs, staging, "openvino", checkpoint={"tensors_sha256": digest}, on_converted=on_converted
        )
        _write_json(staging / DIGESTS, _digests(staging))
        staging.rename(folder)
    except OSError:
        if not (folder / MANIFEST).is_file():  # else another worker converted it at the same time
            raise
    finally:
        _remove(staging)


def alias_path(cache_dir: Path, model: nn.Module, family: ModelFamily) -> Path | None:
    """Where the alias of the model's checkpoint file lives; None for a model not loaded from a file."""
    identity = getattr(model, "checkpoint_identity", None)
    if identity is None:
        return None
    key = [identity, family.name, model.config, list(model.frame_shape), import_openvino().get_version()]
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir / ALIASES / f"{name}.json"


def read_alias(
    alias: Path | None, cache_dir: Path, model: nn.Module, family: ModelFamily
) -> tuple[GraphSet, Path] | None:
    """The graphs and entry an alias points to, when it is readable and names the entry that its
    digest gives with today's graph code and OpenVINO; else None (convert or hash as usual)."""
    if alias is None or not alias.is_file():
        return None
    try:
        record = json.loads(alias.read_text())
        folder = cache_dir / str(record["entry"])
        manifest = json.loads((folder / MANIFEST).read_text())
        graphs = family.graphs(model, manifest_source_shapes(manifest))
        if cache_entry(cache_dir, graphs, str(record["digest"])) != folder:
            return None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return graphs, folder


def write_alias(alias: Path | None, folder: Path, digest: str) -> None:
    """Record (atomically) that the aliased file's model is converted in `folder`."""
    if alias is None:
        return
    alias.parent.mkdir(parents=True, exist_ok=True)
    partial = alias.with_name(f".{alias.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps({"entry": folder.name, "digest": digest}))
    partial.replace(alias)


class OpenVinoGraphs:
    """A model's graphs read from the cache (converted first when missing), compiled on demand."""

    def __init__(self, graphs: GraphSet, folder: Path, cache_hit: bool):
        ov = import_openvino()
        self.graph_set = graphs
        self.folder = folder
        self.cache_hit = cache_hit
        self.core = ov.Core()
        self.models = {name: self.core.read_model(str(folder / f"{name}.xml")) for name in graphs.graphs}
        self.compiled: dict[tuple[str, str, int], object] = {}
        self.requests: dict[tuple[str, str, int], list] = {}  # idle infer requests, reused run after run
        self.lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model: nn.Module,
        family: ModelFamily,
        cache_dir: Path,
        on_converted: ConversionCallback | None = None,
    ) -> "OpenVinoGraphs":
        """The model's graphs, from the cache when it has them. `model` is as loaded: it is prepared
        for inference (folded and fused, a second or two for a vox-256 model) only to be converted.

        A model loaded from a file is found by the file's identity (engine/checkpoints.file_identity)
        through an alias, so a hit neither hashes the weights nor runs the model; the alias records
        the content digest and its entry, and is checked against the entry that digest gives now."""
        model.eval()
        cache_dir = private_cache_dir(Path(cache_dir))
        alias = alias_path(cache_dir, model, family)
        hit = read_alias(alias, cache_dir, model, family)
        if hit is not None and cache_problem(hit[1]) is None:
            verify_compiled(hit[1])
            return cls(*hit, cache_hit=True)
        digest = model_digest(model)
        graphs = family.graphs(model)  # the graphs' names, shapes and scopes are those of the prepared model
        folder = cache_entry(cache_dir, graphs, digest)
        if folder.exists():
            problem = cache_problem(folder) if (folder / MANIFEST).is_file() else "is incomplete"
            if problem is None:
                verify_compiled(folder)
                write_alias(alias, folder, digest)
                return cls(graphs, folder, cache_hit=True)
            log.warning("the cached model %s %s: it is converted again", folder, problem)
            _remove(folder)
        graphs = family.graphs(family.prepare(model, "cpu"))
        log.info("converting %s graphs for OpenVINO into %s", graphs.family, folder)
        convert_into(folder, graphs, digest, on_converted)
        write_alias(alias, folder, digest)
        return cls(graphs, folder, cache_hit=False)

    def _compiled(self, name: str, precision: str, n: int) -> tuple[object, int]:
        """A compiled model for batch n or the smallest larger size compiled already, and that size."""
        with self.lock:
            sizes = sorted(
                size for (g, p, size) in self.compiled if (g, p) == (name, precision) and size >= n
            )
            size = sizes[0] if sizes else n
            if (name, precision, size) not in self.compiled:
                graph = self.graph_set.graphs[name]
                cache = self.folder / COMPILED
                model = self._read_int8(name) if precision == INT8 else self.models[name].clone()
                self.compiled[name, precision, size] = compile_graph(
                    self.core, model, graph, size, precision, cache
                )
                record_compiled(self.folder)
            return self.compiled[name, precision, size], size

    def _read_int8(self, name: str):
        """The graph's int8 quantization (`animate quantize`), read fresh: compiling reshapes it."""
        return self.core.read_model(str(self.folder / INT8 / f"{name}.xml"))

    def has_int8(self) -> bool:
        return all((self.folder / INT8 / f"{name}.xml").is_file() for name in QUANTIZED_GRAPHS)

    def forget(self, precision: str) -> None:
        """Drop what was compiled for `precision` (its graphs changed on disk)."""
        with self.lock:
            for key in [key for key in self.compiled if key[1] == precision]:
                del self.compiled[key]
                self.requests.pop(key, None)

    def run(self, name: str, inputs: dict[str, np.ndarray], precision: str = "fp32") -> dict[str, np.ndarray]:
        """Outputs of graph `name` by output name; batch-dimension inputs are padded as needed. A graph
        without low-precision scopes (keypoints, background motion) runs in float32 whatever is asked."""
        graph = self.graph_set.graphs[name]
        precision = precision if graph.low_precision_scopes else "fp32"
        batched = [spec.name for spec in graph.inputs if spec.shape[0] == BATCH]
        n = inputs[batched[0]].shape[0] if batched else 1
        compiled, size = self._compiled(name, precision, n)
        feed = {}
        for spec in graph.inputs:
            array = np.ascontiguousarray(inputs[spec.name])
            if spec.name in batched and size > n:
                array = np.concatenate([array, np.repeat(array[-1:], size - n, axis=0)])
            feed[spec.name] = array
        key = (name, precision, size)
        with self.lock:
            idle = self.requests.setdefault(key, [])
            request = idle.pop() if idle else compiled.create_infer_request()
        try:
            # inputs read where they are (no copy into the request); outputs copied out, so the
            # request can serve the next run while the caller holds these
            results = request.infer(feed, share_inputs=True, share_outputs=False)
        finally:
            with self.lock:
                idle.append(request)
        return {port.get_any_name(): value[:n] if size > n else value for port, value in results.items()}


class OpenVinoAdapter:
    """The Renderer's model adapter (worker/adapters) whose networks run in OpenVINO on the CPU,
    with the same inputs and outputs as the family's torch adapter; families with export graphs only.

    Precision policy as in torch: fp32, or bf16 for the convolution stacks only (keypoints, flows
    and sampling stay float32). `model` stays as loaded: only its attributes are read (frame shape,
    modes), the graphs do the work.
    """

    def __init__(
        self,
        model: nn.Module,
        family: ModelFamily,
        cache_dir: Path,
        on_converted: ConversionCallback | None = None,
    ):
        self.model = model
        self.graphs = OpenVinoGraphs.load(model, family, cache_dir, on_converted)
        self.native_bf16 = cpu_has_bf16(self.graphs.core)
        self._warned_bf16 = False

    def check_precision(self, precision: str) -> str:
        """The precision the graphs run in: bf16 only where the CPU has it (OpenVINO would emulate
        it), int8 only with the model's quantized graphs; RenderError (invalid_option) otherwise."""
        if precision == INT8 and not self.graphs.has_int8():
            raise RenderError(
                "int8: this model has no quantized graphs in the model cache; make them with "
                "`animate quantize --checkpoint ... --cache-dir ...`",
                "invalid_option",
            )
        if precision not in (*OPENVINO_PRECISIONS, INT8):
            raise RenderError("the openvino runtime runs fp32, bf16 or int8", "invalid_option")
        if precision == "bf16" and not self.native_bf16:
            if not self._warned_bf16:
                log.warning("this CPU has no native bfloat16: OpenVINO runs bf16 requests in float32")
                self._warned_bf16 = True
            return "fp32"
        return precision

    def keypoints(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """The keypoints graph's outputs under their names, which are the torch detector's keys."""
        outputs = self.graphs.run("keypoints", {"frames": frames.float().numpy()})
        return {name: torch.from_numpy(value) for name, value in outputs.items()}

    def prepare_source(self, source: torch.Tensor, precision: str, options: AnimationOptions) -> SourceState:
        precision = self.check_precision(precision)
        source = source.float().contiguous()
        kp_source = self.keypoints(source)
        graphs = self.graphs.graph_set
        outputs = self.graphs.run("source", graphs.source_feed(source, kp_source), precision)
        features = graphs.source_features(outputs, source)
        return SourceState(features, kp_source, precision, options)

    def animate(
        self, state: SourceState, frames: torch.Tensor, kp_driving: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        def run(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return self.graphs.run(name, inputs, state.precision)

        feed = self.graphs.graph_set.frame_feed(state, kp_driving, frames, run)
        outputs = run("frame", feed)
        return {name: torch.from_numpy(value) for name, value in outputs.items()}

    def animate_sessions(
        self, states: list[SourceState], frames: torch.Tensor, kp_driving: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Each session's frame through the batch-1 graphs in turn, outputs joined in order. The
        graphs take one source (broadcast); on a CPU a batch costs as much per frame as batch 1
        (docs/BENCHMARKS.md: 0.549 against 0.545 s a frame at batches 1 and 4), so turn by turn
        loses nothing and compiles nothing more."""
        outputs = [
            self.animate(state, frames[i : i + 1], frame_keypoints(kp_driving, i))
            for i, state in enumerate(states)
        ]
        return {name: torch.cat([out[name] for out in outputs]) for name in outputs[0]}

    def still(self, state: SourceState) -> dict[str, torch.Tensor]:
        """The source's own keypoints in absolute mode, background unmoved: the output with no motion."""
        options = state.options.model_copy(update={"mode": "absolute", "background_motion": False})
        still = replace(state, options=options, kp_initial=state.kp_source)
        return self.animate(still, still.features.image, state.kp_source)
