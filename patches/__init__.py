"""Every hook into SGLang internals, one module per SGLang target, importable as
``a2ats_sglang.patches``. Each module's docstring names its target (SGLang 0.5.17) and a test
asserts the target's signature, so an SGLang upgrade fails loudly instead of silently.

The convention, for a module ``patches/<name>.py``:

- its docstring names the SGLang 0.5.17 target and why we hook it;
- ``TARGET = "sglang.srt.<module>.<Class>.<method>"``: a dotted path that resolves by importing
  the longest importable module prefix and then ``getattr`` on the rest;
- ``SIGNATURE = "(self, ...)"``: ``str(inspect.signature(target))`` in SGLang 0.5.17, as
  ``tests/test_patches.py`` checks it in a process where nothing is installed;
- ``install() -> None``: applies the patch; idempotent (a second call changes nothing).

Modules are discovered, not listed: adding a file here is all it takes for :func:`install_all`
(called by ``a2ats_sglang.runtime.plugin.install``) and the signature test to pick it up. A
module with ``ON_DEMAND = True`` hooks a target only some entry points import (a benchmark):
:func:`install_all` skips it, and those entry points install it themselves.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)


def module_names() -> tuple[str, ...]:
    """Names of the patch modules in this package, sorted."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def load(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def resolve(target: str) -> Any:
    """The object a dotted ``TARGET`` names (module prefix imported, the rest by ``getattr``)."""
    parts = target.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"no importable module in {target!r}")


def signature_of(target: str) -> str:
    return str(inspect.signature(resolve(target)))


def install_around(module: ModuleType, hook: Any) -> None:
    """Run ``hook(original, *args)`` around ``module.TARGET`` through SGLang's ``HookRegistry``,
    once per process (a module's ``_installed`` flag makes its ``install`` idempotent)."""
    if getattr(module, "_installed", False):
        return
    from sglang.srt.plugins import hook_registry
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    original = resolve(module.TARGET)
    HookRegistry.register(module.TARGET, hook, HookType.AROUND)
    # the registry logs "Applied 1 hook(s) ..." at INFO for every patch, in every process
    registry_log = hook_registry.logger
    level = registry_log.level
    registry_log.setLevel(logging.WARNING)
    try:
        HookRegistry.apply_hooks()
    finally:
        registry_log.setLevel(level)
    if resolve(module.TARGET) is original:  # the registry logs a failure instead of raising
        raise RuntimeError(f"{module.__name__}: SGLang's HookRegistry did not wrap {module.TARGET}")
    logger.debug("patched %s", module.TARGET)
    module._installed = True


def install_all() -> None:
    """Install every patch module but the on-demand ones (each is idempotent, so calling this
    twice is harmless)."""
    for name in module_names():
        module = load(name)
        if not getattr(module, "ON_DEMAND", False):
            module.install()
