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
    from sglang.benchmark import offline_throughput

    from a2ats_sglang.launch_server import run_sglang_cli, wants_help
    from a2ats_sglang.runtime.plugin import entry_point_installed

    args = list(sys.argv[1:] if argv is None else argv)
    if not wants_help(args) and not entry_point_installed():
        print(
            f"{PROG}: error: the scheduler processes sgl.Engine spawns find a2ats only through the "
            "sglang.srt.plugins entry point, which is not installed; run `pip install -e .` in "
            "the a2ats-sglang checkout",
            file=sys.stderr,
        )
        return 1
    return run_sglang_cli(PROG, "python -m sglang.bench_offline_throughput", offline_throughput.cli_main, args)


if __name__ == "__main__":
    sys.exit(main())
