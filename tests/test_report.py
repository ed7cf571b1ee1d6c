"""README tables and plots from result files."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report

META = {"device": "NVIDIA H100 80GB HBM3", "commit": "abcdef1234", "command": "python -m x"}


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def test_report_fills_readme_blocks_and_plots(tmp_path: Path) -> None:
    res = tmp_path / "results"
    res.mkdir()
    write(res / "accuracy-stock.json", {
        "meta": META, "label": "stock", "complete": True,
        "results": {"passkey": {"2048": {"score": 1.0, "n": 25}, "4096": {"score": 0.8, "n": 25}},
                    "vt": {"2048": {"score": 0.5, "n": 25}, "4096": {"score": 0.25, "n": 25}}},
    })
    write(res / "accuracy-broken.json", {"meta": META, "label": "broken", "complete": False, "error": "HTTP 500",
                                        "results": {"passkey": {"2048": {"score": 0.0, "n": 25}}}})
    write(res / "throughput-stock.json", {
        "meta": META, "label": "stock", "server_command": "-m sglang.launch_server", "kv_capacity_tokens": 423499,
        "peak_gpu_memory_mib": 78000,
        "runs": [{"input_len": 32768, "concurrency": 12, "output_throughput": 123.45, "mean_ttft_ms": 20500.0, "mean_tpot_ms": 61.2},
                 {"input_len": 999999, "error": "one request needs 1000255 tokens"}],
    })
    write(res / "throughput-external.json", {  # an external server's run: no capacity or memory readings
        "meta": META, "label": "external", "server_command": "external",
        "runs": [{"input_len": 32768, "concurrency": 21, "output_throughput": 128.2, "mean_ttft_ms": 9000.0, "mean_tpot_ms": 40.0}],
    })
    write(res / "fidelity.json", {"meta": META, "results": {
        "oracle": {"0.03": {"recall": 0.927, "output_rel_error": 0.07, "selected_fraction": 0.0416}},
        "a2ats": {"0.03": {"recall": 0.837, "output_rel_error": 0.193, "selected_fraction": 0.0416}}}})
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- report:accuracy -->\nold\n<!-- /report:accuracy -->\nmiddle\n"
                      "<!-- report:throughput -->\n<!-- /report:throughput -->\n<!-- report:fidelity -->\n\n<!-- /report:fidelity -->\nend\n")
    assert report.main(["--results", str(res), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.startswith("# x\n") and "\nmiddle\n" in text and text.endswith("end\n")
    # one table per length, a column per run; a run without a length is left out of its table
    assert "**2,048 tokens**\n\n| task | broken | stock |" in text and "**4,096 tokens**\n\n| task | stock |" in text
    assert "| passkey | 0.00 | 1.00 |" in text and "| vt | – | 0.50 |" in text
    assert "| **mean** | **0.00** | **0.75** |" in text and "| passkey | 0.80 |" in text and "| **mean** | **0.53** |" in text
    assert "PARTIAL: HTTP 500" in text and "commit abcdef1" in text
    assert "| stock | 32,768 | 12 | 123.5 | 20.5 | 61.2 | 423,499 | 76.2 |" in text
    assert "one request needs 1000255 tokens" in text
    assert "| external | 32,768 | 21 | 128.2 | 9.0 | 40.0 | – | – |" in text
    assert "| `a2ats` | 0.837 / 0.193 | 4.2 % |" in text
    assert (res / "accuracy.png").stat().st_size > 5000 and (res / "throughput.png").stat().st_size > 5000
    # idempotent
    before = readme.read_text()
    report.main(["--results", str(res), "--readme", str(readme)])
    assert readme.read_text() == before
