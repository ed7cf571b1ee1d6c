"""Which codebook a server uses, decided in the launcher before any SGLang process starts.

A bad codebook must stop the launch with a readable message rather than surface as a
traceback from a scheduler subprocess, so every check happens here, in the parent:

- ``--a2ats-codebook DIR``: load it and check it fits the model;
- otherwise the per-model cache ``<cache>/codebooks/<model dir name>-<config hash>``: used if
  valid, else calibrated once with ``python -m a2ats_sglang.calibrate``;
- with ``--load-format dummy`` (random weights, throughput runs) and no calibrated codebook:
  a random one in ``<...>-random``, never used for real weights.

Writers serialise on a lock file and publish by renaming a finished temporary directory, so
concurrent launchers neither calibrate twice nor read a half-written codebook. A writer stopped
by Ctrl-C or SIGTERM removes its temporary directory; one killed outright leaves it, and the
next writer (holding the lock, so no one else writes) sweeps it away.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from a2ats_sglang.default_model import cache_dir
from a2ats_sglang.method.codebook import (
    Codebook,
    CodebookError,
    ModelIdentity,
)
from a2ats_sglang.method.rope import UnsupportedRopeError

RANDOM_CODEBOOK_SIZE = 4096  # what calibration produces, so dummy-weight throughput is comparable
RANDOM_SEED = 0

logger = logging.getLogger(__name__)


class CalibrationFailed(RuntimeError):
    """The automatic first-start calibration did not produce a codebook."""


def model_config(model_path: str, trust_remote_code: bool = False) -> Any:
    """The model's HF config: ``config.json`` of a local checkpoint (what calibration reads),
    else ``transformers.AutoConfig`` (hub ids, remote code)."""
    cfg_file = Path(model_path) / "config.json"
    if cfg_file.is_file():
        return json.loads(cfg_file.read_text())
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise CodebookError(f"cannot read the model config of {model_path}: {e}") from e


def model_identity(config: Any, model_path: str) -> ModelIdentity:
    try:
        return ModelIdentity.from_hf_config(config)
    except UnsupportedRopeError as e:
        raise CodebookError(f"A²ATS cannot serve {model_path}: {e}") from e
    except (KeyError, TypeError) as e:
        raise CodebookError(f"{model_path} has no usable attention config ({e!r} missing)") from e


def cache_root() -> Path:
    return cache_dir() / "codebooks"


def cached_codebook_dir(model_path: str, identity: ModelIdentity) -> Path:
    """``<cache>/codebooks/<model dir name>-<config hash>``."""
    name = Path(model_path.rstrip("/")).name or "model"
    return cache_root() / f"{name}-{identity.config_hash}"


def resolve_codebook(
    model_path: str,
    codebook: str | None,
    load_format: str | None,
    trust_remote_code: bool = False,
) -> str:
    """The codebook directory to serve ``model_path`` with (absolute); see the module doc.

    Raises :class:`CodebookError` (a codebook that does not fit) or :class:`CalibrationFailed`.
    """
    config = model_config(model_path, trust_remote_code)
    identity = model_identity(config, model_path)  # an unsupported model fails here, clearly
    if codebook is not None:
        try:
            book = Codebook.load(codebook, model_config=config)
        except CodebookError as e:
            raise CodebookError(f"--a2ats-codebook {codebook}: {e}") from e
        if book.meta.calibration.get("random") and load_format != "dummy":
            logger.warning("[a2ats] %s is a RANDOM codebook: sparse attention will pick arbitrary tokens", codebook)
        logger.info("[a2ats] codebook %s (%s, %d codewords)", codebook, book.meta.kind, book.meta.codebook_size)
        return str(Path(codebook).resolve())

    calibrated = cached_codebook_dir(model_path, identity)
    if _usable(calibrated, config):
        logger.info("[a2ats] using the cached codebook %s", calibrated)
        return str(calibrated)
    if load_format == "dummy":
        random_dir = calibrated.with_name(calibrated.name + "-random")
        with _locked(random_dir):
            if not _usable(random_dir, config, allow_random=True):
                logger.warning(
                    "[a2ats] --load-format dummy and no calibrated codebook for %s: writing a RANDOM "
                    "codebook to %s. Speed is representative; accuracy is meaningless.",
                    model_path, random_dir,
                )
                _publish(random_dir, lambda tmp: random_codebook(identity, RANDOM_CODEBOOK_SIZE).save(tmp))
        return str(random_dir)

    with _locked(calibrated):
        if not _usable(calibrated, config):  # another launcher may have finished meanwhile
            logger.info(
                "[a2ats] no codebook for %s yet: calibrating one into %s (first start only; pass "
                "--a2ats-codebook DIR to use your own, see python -m a2ats_sglang.calibrate --help)",
                model_path, calibrated,
            )
            _publish(calibrated, lambda tmp: _calibrate(model_path, tmp))
    Codebook.load(calibrated, model_config=config)  # what calibration wrote must fit; raises if not
    return str(calibrated)


def random_codebook(identity: ModelIdentity, size: int = RANDOM_CODEBOOK_SIZE, seed: int = RANDOM_SEED) -> Codebook:
    """The right shapes for dummy weights, where calibration would measure nothing."""
    reason = "--load-format dummy: random weights, nothing to calibrate on"
    return Codebook.random(identity, size, seed, calibration={"random": True, "seed": seed, "reason": reason})


def _usable(directory: Path, config: Any, allow_random: bool = False) -> bool:
    if not (directory / "codebook.json").is_file():
        return False
    try:
        book = Codebook.load(directory, model_config=config)
    except CodebookError as e:
        logger.warning("[a2ats] ignoring the cached codebook %s: %s", directory, e)
        return False
    return allow_random or not book.meta.calibration.get("random", False)


def _calibrate(model_path: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "a2ats_sglang.calibrate", "--model-path", model_path, "--out", str(out)]
    logger.info("[a2ats] running %s", " ".join(cmd))
    # stdout/stderr are inherited so the calibration progress bars show in the launcher's terminal
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise CalibrationFailed(
            f"calibrating a codebook for {model_path} failed (exit {result.returncode}; its error is "
            "printed above). Fix it, or calibrate yourself with python -m a2ats_sglang.calibrate "
            "and pass --a2ats-codebook DIR"
        )


def _publish(directory: Path, write: Any) -> None:
    """Run ``write(tmp_dir)`` and rename the result to ``directory`` (hold its lock)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".{directory.name}.tmp-*"):  # left by a writer killed outright
        logger.info("[a2ats] removing %s, left by a stopped calibration", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    old = None
    try:
        with _sigterm_exits():
            write(tmp)
        if directory.exists():  # an invalid codebook from an earlier run
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-old-", dir=directory.parent))
            directory.rename(old / "codebook")
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM raises ``SystemExit`` here, so ``finally`` blocks run: the calibration child is
    killed (``subprocess.run`` does so on any exception) and the temporary directory removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.with_name(directory.name + ".lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("[a2ats] waiting for another launcher writing %s", directory)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
