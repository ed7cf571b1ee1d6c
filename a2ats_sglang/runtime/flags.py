"""The ``--a2ats-*`` command-line flags, split off before SGLang parses the rest.

SGLang's ``prepare_server_args`` (and the benchmark CLIs) reject flags they do not know, so
every a2ats CLI parses its own flags with ``parse_known_args`` and hands the remainder to
SGLang untouched. This module imports no sglang.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NamedTuple

from a2ats_sglang.runtime.config import OFFLOAD_CACHES, SELECTORS, WROPE_MODES, A2ATSConfig, ConfigError

FLAG_PREFIX = "--a2ats-"


class SplitArgv(NamedTuple):
    config: A2ATSConfig  # codebook is the user's --a2ats-codebook (None: resolve from the cache)
    rest: list[str]  # everything else, in order, for SGLang


def _int_or_none(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def add_a2ats_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``--a2ats-*`` flags (defaults from :class:`A2ATSConfig`) as one argument group."""
    d = A2ATSConfig()
    g = parser.add_argument_group(
        "A²ATS sparse decode attention",
        "Decode attends to the attention sinks, a local window and the top-K far tokens ranked by "
        "their vector-quantized keys; prefill stays exact.",
    )
    g.add_argument(
        "--a2ats-codebook", metavar="DIR", default=None,
        help="codebook from `python -m a2ats_sglang.calibrate`. Default: the model's cached one, "
        "calibrated on first start (random with --load-format dummy)",
    )
    g.add_argument(
        "--a2ats-budget-ratio", metavar="R", type=float, default=d.budget_ratio,
        help="top-K far tokens per (request, kv head) = clamp(ceil(R × context), MIN, MAX), "
        "in (0, 1]. Default: %(default)s",
    )
    g.add_argument(
        "--a2ats-budget-min", metavar="MIN", type=int, default=d.budget_min,
        help="lower bound of top-K. Default: %(default)s",
    )
    g.add_argument(
        "--a2ats-budget-max", metavar="MAX", type=_int_or_none, default=d.budget_max,
        help="upper bound of top-K, or 'none'. Default: %(default)s",
    )
    g.add_argument(
        "--a2ats-window", metavar="W", type=int, default=d.window,
        help="recent tokens always attended. Default: the codebook's (64)",
    )
    g.add_argument(
        "--a2ats-sinks", metavar="S", type=int, default=d.sinks,
        help="first tokens always attended. Default: the codebook's (8)",
    )
    g.add_argument(
        "--a2ats-b", metavar="B", type=int, default=d.b,
        help="windowed-RoPE distance of --a2ats-wrope single. Default: the codebook's (2048)",
    )
    g.add_argument(
        "--a2ats-wrope", choices=WROPE_MODES, default=d.wrope,
        help="score far tokens at one distance b (the paper) or per log2 distance bucket. "
        "Default: %(default)s",
    )
    g.add_argument(
        "--a2ats-selector", choices=SELECTORS, default=d.selector,
        help="rank a kv head's tokens by the max or mean over its query heads. Default: %(default)s",
    )
    g.add_argument(
        "--a2ats-offload", action="store_true",
        help="keep the KV cache in pinned CPU memory (codes and hot buffers on the GPU), so "
        "admission counts host RAM instead of HBM",
    )
    g.add_argument(
        "--a2ats-host-kv-gb", metavar="GB", type=float, default=d.host_kv_gb,
        help="host KV pool size with --a2ats-offload, in GiB. Default: 60%% of the free RAM",
    )
    g.add_argument(
        "--a2ats-offload-cache", choices=OFFLOAD_CACHES, default=d.offload_cache,
        help="GPU cache of picked host K/V with --a2ats-offload: a hot buffer per request row, or "
        "one cache all requests share, so shared prefixes are fetched once and running requests "
        "are not capped by buffers (experimental). Default: %(default)s",
    )
    g.add_argument(
        "--a2ats-gpu-homes", metavar="TOKENS", nargs="?", type=int, const=-1, default=d.gpu_homes,
        help="with --a2ats-offload --a2ats-offload-cache shared: home tokens in HBM while it has room "
        "(read in place, no copy) and the rest in the host pool, so capacity is HBM plus host memory; "
        "TOKENS caps the HBM homes (default: as many as fit). Experimental, not yet run on a GPU",
    )


def config_from_args(ns: argparse.Namespace) -> A2ATSConfig:
    """Raises :class:`ConfigError` for values that parse but cannot work."""
    return A2ATSConfig(
        codebook=ns.a2ats_codebook,
        budget_ratio=ns.a2ats_budget_ratio,
        budget_min=ns.a2ats_budget_min,
        budget_max=ns.a2ats_budget_max,
        window=ns.a2ats_window,
        sinks=ns.a2ats_sinks,
        b=ns.a2ats_b,
        wrope=ns.a2ats_wrope,
        selector=ns.a2ats_selector,
        offload=ns.a2ats_offload,
        host_kv_gb=ns.a2ats_host_kv_gb,
        offload_cache=ns.a2ats_offload_cache,
        gpu_homes=ns.a2ats_gpu_homes,
    )


def a2ats_parser(prog: str | None = None) -> argparse.ArgumentParser:
    # allow_abbrev=False: an abbreviation must never swallow one of SGLang's flags
    parser = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    add_a2ats_args(parser)
    return parser


def split_argv(argv: Sequence[str], prog: str | None = None) -> SplitArgv:
    """Our flags (``--flag value`` or ``--flag=value``) → config; the rest stays for SGLang.

    Bad values, and any leftover ``--a2ats-*`` flag (a typo), exit with status 2 and the
    message, as argparse does.
    """
    parser = a2ats_parser(prog)
    ns, rest = parser.parse_known_args(list(argv))
    unknown = [a.split("=", 1)[0] for a in rest if a.startswith(FLAG_PREFIX)]
    if unknown:
        known = sorted(o for a in parser._actions for o in a.option_strings)
        parser.error(f"unrecognized A²ATS flag {unknown[0]} (known: {', '.join(known)})")
    try:
        config = config_from_args(ns)
    except ConfigError as e:
        parser.error(str(e))
    return SplitArgv(config, rest)
