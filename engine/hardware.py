"""What this machine's CPU can do, for the precision policy and the benchmarks' headers."""

import functools
import os
import platform
from pathlib import Path

import torch

# Instruction-set flags (as /proc/cpuinfo names them) that matter to convolution speed.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


@functools.cache
def onednn_bf16() -> bool:
    """Whether oneDNN has bf16 convolution kernels here; without them PyTorch falls back to a slow loop."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_bf16() -> bool:
    """bf16 arithmetic in hardware (AVX-512 BF16 or AMX) and kernels that use it: bf16 pays off."""
    return onednn_bf16() and bool(cpu_flags() & set(NATIVE_BF16_FLAGS))


def default_precision(device: str) -> str:
    """bf16 on a GPU and on CPUs with native bf16; fp32 elsewhere, where bf16 would be emulated."""
    if torch.device(device).type == "cuda" or native_bf16():
        return "bf16"
    return "fp32"


def describe_cpu() -> str:
    """One line: model, cores, the relevant instruction-set flags, torch's threads."""
    flags = cpu_flags()
    present = [flag for flag in RELEVANT_FLAGS if flag in flags] or ["flags unknown"]
    bf16 = "native bf16" if native_bf16() else "no native bf16"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores ({', '.join(present)}; {bf16}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
