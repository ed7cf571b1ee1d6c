"""``python -m benchmarks.one_batch_stock``: SGLang's one-batch benchmark on stock SGLang, with
the batch prefilled in groups of requests as ``a2ats_sglang.bench_one_batch`` prefills it
(``patches/one_batch_prefill.py``), so that ``benchmarks.one_batch`` times both sides alike.
Takes every ``python -m sglang.bench_one_batch`` flag."""

from __future__ import annotations

from a2ats_sglang.patches import one_batch_prefill

one_batch_prefill.install()  # at import: the workers --tp-size > 1 spawns re-import this module


def main() -> int:
    from sglang.benchmark.one_batch import cli_main

    cli_main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
