from __future__ import annotations

import json
from pathlib import Path

from benchmarks import compare


def run(preds: dict[str, dict[str, list[str]]]) -> dict:
    return {"samples": {t: {n: [{"index": i, "prediction": p} for i, p in enumerate(ps)] for n, ps in by.items()}
                        for t, by in preds.items()}}


def test_identical_and_different_predictions(tmp_path: Path, capsys) -> None:
    a = run({"passkey": {"4096": ["1", "2", "3"]}, "vt": {"4096": ["x"]}})
    b = run({"passkey": {"4096": ["1", "9"]}, "vt": {"4096": ["x"]}})
    cells, diffs = compare.differences(a, b)
    assert cells == {"passkey/4096": (1, 2), "vt/4096": (1, 1)}
    assert diffs == [("passkey", "4096", 1, "2", "9")]
    for name, data in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    assert "2/3 predictions identical" in capsys.readouterr().out
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
