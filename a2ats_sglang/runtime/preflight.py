"""What a launch can be refused for before any GPU work starts.

The launcher runs these checks before it resolves the default model or resolves or calibrates a
codebook, so a setting a2ats cannot serve fails in seconds with one line instead of minutes
later, inside a scheduler process, with a traceback. They read only the command line, the free
RAM and whether CUDA sees a device, and import no sglang (importing SGLang's flag parser alone
takes ~14 s on a 2-core machine).

The same :func:`check_settings` runs again on SGLang's resolved ``ServerArgs`` (an abbreviated
flag such as ``--tp 2`` is seen only there) and at pool sizing in the scheduler.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from a2ats_sglang.runtime.config import A2ATSConfig

GiB = 2**30
DEFAULT_RAM_FRACTION = 0.6  # of the RAM free at start-up: the OS, page cache and SGLang need the rest
MAX_RAM_FRACTION = 0.9  # an explicit host pool beyond this fraction of free RAM is refused
RADIX_BACKEND = "a2ats-offload"  # offload mode's prefix cache (runtime/tiered/radix.py)
KV_DTYPES = (None, "auto", "bf16", "bfloat16", "float16", "fp16")  # the codes are encoded from 16-bit keys read back
PARALLEL = (  # (field, flag): layouts a2ats does not serve yet, all on one GPU
    ("tp_size", "--tp-size"),
    ("pp_size", "--pp-size"),
    ("dp_size", "--dp-size"),
    ("dcp_size", "--dcp-size"),
    ("nnodes", "--nnodes"),
)


class Unsupported(ValueError):
    """A setting a2ats cannot serve with; the message is one line naming the flag."""


def sglang_view(argv: Sequence[str]) -> argparse.Namespace:
    """The SGLang flags the launcher reads or checks, at SGLang's defaults when absent.

    Full names and SGLang's aliases only: an abbreviation (``--tp 2``) is caught after SGLang
    parses, by the same checks.
    """
    view = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add = view.add_argument
    add("--model-path", "--model", dest="model_path")
    add("--load-format")
    add("--trust-remote-code", action="store_true")
    add("--attention-backend")
    add("--decode-attention-backend")
    add("--prefill-attention-backend")
    add("--tp-size", "--tensor-parallel-size", dest="tp_size", type=int, default=1)
    add("--pp-size", "--pipeline-parallel-size", dest="pp_size", type=int, default=1)
    add("--dp-size", "--data-parallel-size", dest="dp_size", type=int, default=1)
    add("--dcp-size", "--decode-context-parallel-size", dest="dcp_size", type=int, default=1)
    add("--nnodes", type=int, default=1)
    add("--enable-dp-attention", action="store_true")
    add("--speculative-algorithm")
    add("--kv-cache-dtype", default="auto")
    add("--dtype", default="auto")
    add("--device")
    add("--enable-mixed-chunk", action="store_true")
    add("--page-size", type=int)
    add("--disable-radix-cache", action="store_true")
    add("--radix-cache-backend")
    add("--enable-hierarchical-cache", action="store_true")
    ns, _ = view.parse_known_args(list(argv))
    return ns


def check_settings(s: Any, cfg: A2ATSConfig) -> None:
    """Refuse what a2ats cannot serve. ``s`` has SGLang's field names: :func:`sglang_view`'s
    namespace before SGLang starts, ``ServerArgs`` after it parsed."""
    for field, flag in PARALLEL:
        value = getattr(s, field, 1) or 1
        if value != 1:
            raise Unsupported(f"{flag} {value}: a2ats serves on one GPU for now (no tensor, pipeline or data parallelism)")
    if getattr(s, "enable_dp_attention", False):
        raise Unsupported("--enable-dp-attention: a2ats serves on one GPU for now")
    if getattr(s, "speculative_algorithm", None):
        raise Unsupported(f"--speculative-algorithm {s.speculative_algorithm}: a2ats does not support speculative decoding yet")
    if getattr(s, "kv_cache_dtype", None) not in KV_DTYPES:
        raise Unsupported(
            f"--kv-cache-dtype {s.kv_cache_dtype}: a2ats keeps the KV cache in 16 bits (it encodes keys read "
            "back from it); use --kv-cache-dtype auto"
        )
    if getattr(s, "dtype", None) in ("float32", "float"):
        raise Unsupported(f"--dtype {s.dtype}: a2ats keeps the KV cache in 16 bits; use --dtype auto, bfloat16 or float16")
    if cfg.offload:
        check_offload(s)


def check_offload(s: Any) -> None:
    """What ``--a2ats-offload`` needs from SGLang's settings."""
    problems = []
    if getattr(s, "enable_mixed_chunk", False):
        problems.append("no --enable-mixed-chunk (a mixed batch's decode rows would need their KV on the GPU)")
    if getattr(s, "page_size", None) not in (None, 1):
        problems.append("--page-size 1")
    backend = getattr(s, "radix_cache_backend", None)
    if not getattr(s, "disable_radix_cache", False) and backend not in (None, RADIX_BACKEND):
        problems.append(f"--radix-cache-backend {RADIX_BACKEND} (prefix staging relies on its tree), not {backend}")
    if getattr(s, "enable_hierarchical_cache", False):
        problems.append("no --enable-hierarchical-cache (offload keeps KV in host memory itself)")
    if problems:
        raise Unsupported("--a2ats-offload needs " + "; ".join(problems))


def free_ram() -> int:
    import psutil

    return psutil.virtual_memory().available


def host_pool_bytes(requested_gib: float | None, available: int) -> int:
    """Bytes of the pinned host KV pool for ``--a2ats-host-kv-gb`` (``None``: a share of the free
    RAM); one that the machine cannot spare is refused."""
    if requested_gib is None:
        return int(available * DEFAULT_RAM_FRACTION)
    if requested_gib <= 0:
        raise Unsupported(f"--a2ats-host-kv-gb must be positive, got {requested_gib}")
    budget = int(requested_gib * GiB)
    if budget > available * MAX_RAM_FRACTION:
        raise Unsupported(
            f"--a2ats-host-kv-gb {requested_gib:g} asks for more pinned memory than this machine can spare: "
            f"{available / GiB:.1f} GiB free, at most {MAX_RAM_FRACTION:.0%} of it usable"
        )
    return budget


def check_host_ram(cfg: A2ATSConfig) -> None:
    if cfg.offload:
        host_pool_bytes(cfg.host_kv_gb, free_ram())


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpu(device: str | None = None) -> None:
    """``device``: the ``--device`` flag, if given."""
    if device not in (None, "cuda"):
        raise Unsupported(f"--device {device}: a2ats serves on an NVIDIA GPU (--device cuda)")
    if cuda_device_count() == 0:
        raise Unsupported(
            "no CUDA GPU is visible: a2ats serves on an NVIDIA GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES); "
            "calibrating or serving on the CPU would take hours"
        )
