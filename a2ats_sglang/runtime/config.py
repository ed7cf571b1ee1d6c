"""A²ATS serving settings: one frozen dataclass, built once from ``--a2ats-*`` flags.

SGLang starts its scheduler with ``spawn``, so nothing set in the launcher process survives
into it except environment variables. The launcher serialises the config to JSON in
``A2ATS_SGLANG_CONFIG`` and sets ``A2ATS_SGLANG_ENABLE=1``; the scheduler rebuilds it with
:func:`current_config`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

ENABLE_ENV = "A2ATS_SGLANG_ENABLE"
CONFIG_ENV = "A2ATS_SGLANG_CONFIG"
WROPE_MODES = ("single", "bucketed")
SELECTORS = ("max", "mean")
OFFLOAD_CACHES = ("buffers", "shared")  # one hot buffer per request row; one cache all requests share


class ConfigError(ValueError):
    """An ``--a2ats-*`` setting that cannot work."""


@dataclass(frozen=True)
class A2ATSConfig:
    """What the backend needs; ``None`` fields take the codebook's calibration values."""

    codebook: str | None = None  # codebook directory (resolved by the launcher)
    budget_ratio: float = 0.03  # top-K = clamp(ceil(ratio * context), budget_min, budget_max)
    budget_min: int = 256
    budget_max: int | None = 4096
    window: int | None = None
    sinks: int | None = None
    b: int | None = None
    wrope: str = "bucketed"
    selector: str = "max"
    offload: bool = False  # full KV in pinned host memory, codes and hot buffers on the GPU
    host_kv_gb: float | None = None  # host pool size (None: a share of free RAM)
    offload_cache: str = "buffers"  # where picked host K/V is cached on the GPU (OFFLOAD_CACHES)
    gpu_homes: int = 0  # offload: tokens homed in HBM too (read in place): 0 none, -1 as many as fit, N at most N

    def __post_init__(self) -> None:
        if not 0.0 < self.budget_ratio <= 1.0:
            raise ConfigError(f"--a2ats-budget-ratio must be in (0, 1], got {self.budget_ratio}")
        if self.budget_min < 0:
            raise ConfigError(f"--a2ats-budget-min must be >= 0, got {self.budget_min}")
        if self.budget_max is not None and self.budget_max < max(self.budget_min, 1):
            raise ConfigError(
                f"--a2ats-budget-max ({self.budget_max}) must be >= --a2ats-budget-min "
                f"({self.budget_min}) and >= 1"
            )
        for name in ("window", "sinks", "b"):
            value = getattr(self, name)
            if value is not None and value < (1 if name != "sinks" else 0):
                raise ConfigError(f"--a2ats-{name} must be positive, got {value}")
        if self.wrope not in WROPE_MODES:
            raise ConfigError(f"--a2ats-wrope must be one of {WROPE_MODES}, got {self.wrope!r}")
        if self.host_kv_gb is not None and not self.host_kv_gb > 0:
            raise ConfigError(f"--a2ats-host-kv-gb must be positive, got {self.host_kv_gb}")
        if self.host_kv_gb is not None and not self.offload:
            raise ConfigError("--a2ats-host-kv-gb sizes the host KV pool of --a2ats-offload; pass both")
        if self.offload_cache not in OFFLOAD_CACHES:
            raise ConfigError(f"--a2ats-offload-cache must be one of {OFFLOAD_CACHES}, got {self.offload_cache!r}")
        if self.offload_cache != "buffers" and not self.offload:
            raise ConfigError("--a2ats-offload-cache chooses the GPU cache of --a2ats-offload; pass both")
        if self.gpu_homes < -1:
            raise ConfigError(f"--a2ats-gpu-homes takes a number of tokens, got {self.gpu_homes}")
        if self.gpu_homes and not (self.offload and self.offload_cache == "shared"):
            raise ConfigError("--a2ats-gpu-homes splits the KV of --a2ats-offload --a2ats-offload-cache shared "
                              "between HBM and host memory; pass all three")
        if self.selector not in SELECTORS:
            raise ConfigError(f"--a2ats-selector must be one of {SELECTORS}, got {self.selector!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> A2ATSConfig:
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{CONFIG_ENV} is not valid JSON: {e}") from e
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{CONFIG_ENV} has unknown keys {sorted(unknown)}")
        return cls(**data)


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "") == "1"


def current_config() -> A2ATSConfig:
    """The config the launcher exported, or the defaults when none was."""
    text = os.environ.get(CONFIG_ENV)
    return A2ATSConfig.from_json(text) if text else A2ATSConfig()


def export_config(config: A2ATSConfig) -> None:
    """Make ``config`` visible to every SGLang process spawned after this call."""
    os.environ[ENABLE_ENV] = "1"
    os.environ[CONFIG_ENV] = config.to_json()
