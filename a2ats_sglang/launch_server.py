"""``python -m a2ats_sglang.launch_server``: SGLang's HTTP server with A²ATS sparse decode.

Takes every ``python -m sglang.launch_server`` flag plus the ``--a2ats-*`` flags. Before any
SGLang process starts it:

1. splits off the ``--a2ats-*`` flags (SGLang's argparse rejects unknown flags);
2. refuses, in seconds, what a2ats cannot serve (``runtime/preflight.py``): parallel layouts,
   speculative decoding, a non-16-bit KV cache, a host pool over the free RAM, no CUDA GPU;
3. fills in ``--model-path`` (the embedded SmolLM2-135M-Instruct when none is given),
   ``--attention-backend a2ats`` and ``--cuda-graph-backend-prefill disabled``, and refuses
   attention-backend flags that would bypass a2ats;
4. resolves the codebook (``--a2ats-codebook``, else the per-model cache, calibrating on the
   first start) and stops with exit status 1 if it does not fit the model;
5. exports the config to the environment (the scheduler is spawned and only inherits env)
   and installs the backend in this process, so argparse accepts ``a2ats``;

then runs SGLang's ``http_server.launch_server`` with our ``run_scheduler_process``, which
installs the backend in the scheduler process. ``bench_one_batch`` and
``bench_offline_throughput`` reuse :func:`prepare`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from a2ats_sglang.runtime import preflight
from a2ats_sglang.runtime.config import A2ATSConfig, export_config
from a2ats_sglang.runtime.flags import a2ats_parser, split_argv
from a2ats_sglang.runtime.preflight import RADIX_BACKEND, Unsupported, check_host_ram, check_settings, sglang_view

if TYPE_CHECKING:
    from sglang.srt.server_args import ServerArgs

PROG = "python -m a2ats_sglang.launch_server"
BACKEND = "a2ats"
# Our backend's extend path is FlashInfer already; naming it as the prefill backend is allowed
# (and dropped, see _backend_argv).
PREFILL_ALIASES = ("flashinfer", BACKEND)
# Any of these means the user chose the prefill CUDA-graph mode; keep theirs.
PREFILL_GRAPH_FLAGS = (
    "--cuda-graph-backend-prefill",
    "--cuda-graph-config",
    "--disable-cuda-graph",
    "--disable-prefill-cuda-graph",
    "--enable-breakable-cuda-graph",
    "--disable-piecewise-cuda-graph",
    "--enforce-piecewise-cuda-graph",
)

logger = logging.getLogger("a2ats_sglang.launch")


class UsageError(Exception):
    """A flag combination we refuse (exit status 2); :class:`Unsupported` is refused alike."""


class Launch(NamedTuple):
    config: A2ATSConfig  # codebook resolved to an absolute directory
    argv: list[str]  # for SGLang's argparse
    model_path: str


def _flag_present(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _without_flag(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` minus every ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def _expand_config_file(argv: list[str]) -> list[str]:
    """Inline SGLang's ``--config file.yaml`` so the checks below see its values too."""
    if "--config" not in argv:
        return argv
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.server_args_config_parser import ConfigArgumentMerger

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    try:
        return ConfigArgumentMerger(parser).merge_config_with_args(argv)
    except (ValueError, OSError) as e:
        raise UsageError(f"--config: {e}") from e


def _check_backend_flags(ns: argparse.Namespace) -> None:
    """Attention-backend flags (``ns``: :func:`sglang_view`) that would bypass a2ats."""
    for flag in ("attention_backend", "decode_attention_backend"):
        value = getattr(ns, flag)
        if value not in (None, BACKEND):
            raise UsageError(
                f"--{flag.replace('_', '-')} {value}: this launcher always serves with the a2ats "
                "backend; use python -m sglang.launch_server for other backends"
            )
    if ns.prefill_attention_backend not in (None, *PREFILL_ALIASES):
        raise UsageError(
            f"--prefill-attention-backend {ns.prefill_attention_backend}: a2ats runs prefill itself "
            "(dense FlashInfer, then it encodes the new keys); another prefill backend would skip the encode"
        )


def _backend_argv(argv: list[str], ns: argparse.Namespace, default_model: Callable[[], str]) -> tuple[list[str], str]:
    """Complete SGLang's argv for a2ats (``ns``: its :func:`sglang_view`, checked by
    :func:`_check_backend_flags`); returns it with the model path it serves."""
    # a separate prefill backend makes SGLang build a HybridAttnBackend whose extend never reaches
    # ours, so no codes would be written; a2ats's own extend is the FlashInfer prefill asked for
    if ns.prefill_attention_backend is not None:
        logger.info("[a2ats] --prefill-attention-backend %s: a2ats's extend is FlashInfer already", ns.prefill_attention_backend)
        argv = _without_flag(argv, "--prefill-attention-backend")
    if ns.attention_backend is None:
        argv = [*argv, "--attention-backend", BACKEND]
    model_path = ns.model_path
    if model_path is None:
        model_path = default_model()
        logger.info("[a2ats] no --model-path: serving the embedded default model %s", model_path)
        argv = [*argv, "--model-path", model_path]
    if not any(_flag_present(argv, f) for f in PREFILL_GRAPH_FLAGS):
        # SGLang captures prefill in a *breakable* CUDA graph by default; our extend step (dense
        # attention + key encode + host write) is not validated inside it yet, so prefill runs
        # eagerly unless the user picks a mode. Decode keeps its full CUDA graph.
        argv = [*argv, "--cuda-graph-backend-prefill", "disabled"]
    return _with_warmup(argv), model_path


def _with_warmup(argv: list[str]) -> list[str]:
    """Add a2ats's warm-up (:mod:`~a2ats_sglang.runtime.warmup`) to SGLang's ``--warmups``."""
    from a2ats_sglang.runtime.warmup import NAME

    for i, arg in enumerate(argv):
        if arg == "--warmups" and i + 1 < len(argv):
            names = argv[i + 1].split(",")
            return argv if NAME in names else [*argv[: i + 1], ",".join([*names, NAME]), *argv[i + 2 :]]
        if arg.startswith("--warmups="):
            names = arg.split("=", 1)[1].split(",")
            return argv if NAME in names else [*argv[:i], f"--warmups={','.join([*names, NAME])}", *argv[i + 1 :]]
    return [*argv, "--warmups", NAME]


def _default_model() -> str:
    from a2ats_sglang.default_model import smollm2_path

    return str(smollm2_path())


def _allow_entry_point() -> None:
    """SGLANG_PLUGINS, when set, is a whitelist of entry-point names; make sure it has ours."""
    from a2ats_sglang.runtime.plugin import ENTRY_POINT_NAME

    allowed = os.environ.get("SGLANG_PLUGINS")
    if allowed and ENTRY_POINT_NAME not in {x.strip() for x in allowed.split(",")}:
        os.environ["SGLANG_PLUGINS"] = f"{allowed},{ENTRY_POINT_NAME}"


def prepare(argv: Sequence[str], prog: str = PROG) -> Launch:
    """Everything before SGLang parses its flags (steps 1-4 of the module doc).

    Exits with status 2 on a bad ``--a2ats-*`` value; raises :class:`UsageError`,
    :class:`Unsupported`, ``CodebookError``, ``CalibrationFailed`` or ``FileNotFoundError`` (no
    default model) for the caller to report.
    """
    from a2ats_sglang.runtime.codebook_cache import resolve_codebook

    split = split_argv(argv, prog)
    sglang_argv = _expand_config_file(split.rest)
    ns = sglang_view(sglang_argv)
    # nothing is written (default model, codebook cache) before these pass
    _check_backend_flags(ns)
    check_settings(ns, split.config)
    check_host_ram(split.config)
    preflight.check_gpu(ns.device)
    sglang_argv, model_path = _backend_argv(sglang_argv, ns, _default_model)
    if split.config.offload and not _flag_present(sglang_argv, "--radix-cache-backend"):
        sglang_argv = [*sglang_argv, "--radix-cache-backend", RADIX_BACKEND]
    codebook = resolve_codebook(model_path, split.config.codebook, ns.load_format, ns.trust_remote_code)
    config = replace(split.config, codebook=codebook)
    export_config(config)
    _allow_entry_point()

    from a2ats_sglang.runtime.plugin import install

    install()
    return Launch(config, sglang_argv, model_path)


def check_server_args(server_args: ServerArgs, launch: Launch) -> None:
    """What SGLang resolved must still be a2ats (abbreviated flags bypass the argv checks)."""
    backends = tuple(server_args.get_attention_backends())
    if backends != (BACKEND, BACKEND):
        raise UsageError(f"SGLang resolved the (prefill, decode) attention backends to {backends}, not a2ats")
    if server_args.model_path != launch.model_path:
        raise UsageError(
            f"SGLang serves {server_args.model_path} but the codebook was resolved for {launch.model_path}; "
            "spell --model-path out in full"
        )
    if server_args.encoder_only or server_args.smg_grpc_mode or server_args.use_ray:
        raise UsageError("a2ats serves the default HTTP mode only (no --encoder-only, gRPC or Ray)")
    check_settings(server_args, launch.config)


def wants_help(argv: Sequence[str]) -> bool:
    return "-h" in argv or "--help" in argv


def print_a2ats_help(prog: str, sglang_cli: str) -> None:
    a2ats_parser(prog).print_help()
    print(
        f"\nEvery flag of `{sglang_cli}` is accepted as well and passed through unchanged; "
        "--attention-backend is always a2ats. SGLang's help follows.\n",
        flush=True,
    )


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def run_prepare(argv: Sequence[str], prog: str) -> Launch:
    """:func:`prepare`, turning its errors into ``prog: error: ...`` and exit status 2 or 1."""
    from a2ats_sglang.method.codebook import CodebookError
    from a2ats_sglang.runtime.codebook_cache import CalibrationFailed

    try:
        return prepare(argv, prog)
    except (UsageError, Unsupported) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (CodebookError, CalibrationFailed, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def run_sglang_cli(prog: str, sglang_cli: str, cli_main: Callable[[], object], argv: Sequence[str]) -> int:
    """Run one of SGLang's own CLIs (``cli_main`` parses ``sys.argv``) on the a2ats backend:
    our flags split off and prepared as for the server; ``--help`` shows ours, then SGLang's."""
    from a2ats_sglang.runtime.plugin import install

    argv = list(argv)
    if wants_help(argv):
        print_a2ats_help(prog, sglang_cli)
        install()
        sglang_argv = ["--help"]
    else:
        setup_logging()
        sglang_argv = run_prepare(argv, prog).argv
    sys.argv = [prog, *sglang_argv]
    cli_main()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if wants_help(argv):
        print_a2ats_help(PROG, "python -m sglang.launch_server")
        from sglang.srt.server_args import prepare_server_args

        prepare_server_args(["--help"])  # prints SGLang's help and exits 0
        return 0

    launch = run_prepare(argv, PROG)
    from sglang.srt.entrypoints import http_server
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree
    from sglang.srt.utils.common import suppress_noisy_warnings

    from a2ats_sglang.runtime.plugin import run_scheduler_process

    suppress_noisy_warnings()
    server_args = prepare_server_args(launch.argv)
    try:
        check_server_args(server_args, launch)
    except (UsageError, Unsupported) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    logger.info("[a2ats] %s", launch.config.to_json())
    try:
        http_server.launch_server(server_args, run_scheduler_process_func=run_scheduler_process)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
