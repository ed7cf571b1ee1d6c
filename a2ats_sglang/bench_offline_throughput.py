"""``python -m a2ats_sglang.bench_offline_throughput``: SGLang's offline throughput benchmark
(``sglang.benchmark.offline_throughput``, an in-process ``sgl.Engine``) on the a2ats backend.

Takes every ``python -m sglang.bench_offline_throughput`` flag plus the ``--a2ats-*`` flags,
and does what ``launch_server`` does before SGLang parses them (codebook, config export,
install; see ``a2ats_sglang.launch_server.prepare``). Its argparse runs before any
``load_plugins()``, which is why ``--attention-backend a2ats`` needs this wrapper. The scheduler
processes the Engine spawns install the backend through our ``sglang.srt.plugins`` entry point.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

PROG = "python -m a2ats_sglang.bench_offline_throughput"


def main(argv: Sequence[str] | None = None) -> int:
    from a2ats_sglang.launch_server import (
        print_a2ats_help,
        run_prepare,
        setup_logging,
        wants_help,
    )
    from a2ats_sglang.runtime.plugin import entry_point_installed, install

    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print_a2ats_help(PROG, "python -m sglang.bench_offline_throughput")
        install()
        sglang_argv = ["--help"]
    else:
        if not entry_point_installed():
            print(
                f"{PROG}: error: the scheduler processes sgl.Engine spawns find a2ats only through the "
                "sglang.srt.plugins entry point, which is not installed; run `pip install -e .` in "
                "the a2ats-sglang checkout",
                file=sys.stderr,
            )
            return 1
        setup_logging()
        sglang_argv = run_prepare(argv, PROG).argv

    from sglang.benchmark import offline_throughput

    sys.argv = [PROG, *sglang_argv]  # its cli_main parses sys.argv
    offline_throughput.cli_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
