"""Compare two accuracy runs prediction by prediction (same seeded prompts, greedy decoding).

    python -m benchmarks.compare benchmarks/results/accuracy-stock-smollm2.json accuracy-a2ats-full.json

Prints, per (task, length), how many of the samples both runs hold have identical predictions,
and each differing pair; exits 1 if any differ. Used to check that A²ATS with a budget of the
whole context reproduces stock FlashInfer's outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def differences(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str, int, str, str]]]:
    """Per cell ``(identical, compared)`` and the differing ``(task, length, index, a, b)``."""
    cells, diffs = {}, []
    for task, by_len in b["samples"].items():
        for length, rows in by_len.items():
            ref = {r["index"]: r["prediction"] for r in a["samples"].get(task, {}).get(length, [])}
            both = [(r["index"], ref[r["index"]], r["prediction"]) for r in rows if r["index"] in ref]
            same = sum(x == y for _, x, y in both)
            cells[f"{task}/{length}"] = (same, len(both))
            diffs += [(task, length, i, x, y) for i, x, y in both if x != y]
    return cells, diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("reference")
    p.add_argument("candidate")
    args = p.parse_args(argv)
    a, b = (json.loads(Path(f).read_text()) for f in (args.reference, args.candidate))
    cells, diffs = differences(a, b)
    same, total = sum(s for s, _ in cells.values()), sum(n for _, n in cells.values())
    for cell, (s, n) in cells.items():
        print(f"{cell:32s} {s}/{n} identical")
    for task, length, i, x, y in diffs:
        print(f"\n{task}/{length} #{i}\n  reference: {x!r}\n  candidate: {y!r}")
    print(f"\n{same}/{total} predictions identical")
    return 0 if same == total else 1


if __name__ == "__main__":
    sys.exit(main())
