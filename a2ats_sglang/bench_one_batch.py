"""``python -m a2ats_sglang.bench_one_batch``: SGLang's one-batch latency benchmark
(``sglang.benchmark.one_batch``) on the a2ats backend.

Takes every ``python -m sglang.bench_one_batch`` flag plus the ``--a2ats-*`` flags, and does
what ``launch_server`` does before SGLang parses them (codebook, config export, install; see
``a2ats_sglang.launch_server.prepare``). The benchmark builds its ModelRunner directly and never
calls SGLang's ``load_plugins()``, so the plugin entry point does not reach it: this module
installs the backend itself, at import, so that the workers it spawns for ``--tp-size > 1``
(which re-import this module as ``__mp_main__``) install it too. It also prefills the batch in
groups of requests (``patches/one_batch_prefill.py``), so that batch 16 at 32K fits.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from a2ats_sglang.patches import one_batch_prefill as _prefill_in_groups
from a2ats_sglang.runtime.config import enabled

PROG = "python -m a2ats_sglang.bench_one_batch"

if enabled():  # true in spawned workers: the parent exported the config before spawning
    from a2ats_sglang.runtime.plugin import install

    install()
_prefill_in_groups.install()  # as benchmarks.one_batch_stock does: long batches fit, both sides alike


def main(argv: Sequence[str] | None = None) -> int:
    from sglang.benchmark import one_batch

    from a2ats_sglang.launch_server import run_sglang_cli

    args = sys.argv[1:] if argv is None else argv
    return run_sglang_cli(PROG, "python -m sglang.bench_one_batch", one_batch.cli_main, args)


if __name__ == "__main__":
    sys.exit(main())
