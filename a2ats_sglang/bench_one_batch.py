"""``python -m a2ats_sglang.bench_one_batch``: SGLang's one-batch latency benchmark
(``sglang.benchmark.one_batch``) on the a2ats backend.

Takes every ``python -m sglang.bench_one_batch`` flag plus the ``--a2ats-*`` flags, and does
what ``launch_server`` does before SGLang parses them (codebook, config export, install; see
``a2ats_sglang.launch_server.prepare``). The benchmark builds its ModelRunner directly and never
calls SGLang's ``load_plugins()``, so the plugin entry point does not reach it: this module
installs the backend itself, at import, so that the workers it spawns for ``--tp-size > 1``
(which re-import this module as ``__mp_main__``) install it too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from a2ats_sglang.runtime.config import enabled

PROG = "python -m a2ats_sglang.bench_one_batch"

if enabled():  # true in spawned workers: the parent exported the config before spawning
    from a2ats_sglang.runtime.plugin import install

    install()


def main(argv: Sequence[str] | None = None) -> int:
    from a2ats_sglang.launch_server import (
        print_a2ats_help,
        run_prepare,
        setup_logging,
        wants_help,
    )

    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        from a2ats_sglang.runtime.plugin import install

        print_a2ats_help(PROG, "python -m sglang.bench_one_batch")
        install()
        sglang_argv = ["--help"]
    else:
        setup_logging()
        sglang_argv = run_prepare(argv, PROG).argv

    from sglang.benchmark import one_batch

    sys.argv = [PROG, *sglang_argv]  # its cli_main parses sys.argv
    one_batch.cli_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
