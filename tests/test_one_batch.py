"""benchmarks.one_batch against a fake one-batch benchmark: same flags on both sides, results and
failures recorded, and the ratio only when both sides measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import one_batch

FAKE = '''
import json, os, sys
argv = sys.argv[1:]
module = argv[1]
flags = dict(zip(argv[2::2], argv[3::2]))
stock = module == "benchmarks.one_batch_stock"
if module.startswith("a2ats") and "{fail}" == "a2ats":
    sys.exit("error: no codebook")
if "--attention-backend" in flags and not stock:
    sys.exit("a2ats got a backend flag")
decode = 0.040 if stock else 0.016
row = {{"run_name": flags["--run-name"], "batch_size": int(flags["--batch-size"]),
       "input_len": int(flags["--input-len"]), "output_len": int(flags["--output-len"]),
       "prefill_latency": float(os.environ["A2ATS_ONE_BATCH_PREFILL_TOKENS"]) / 1e4,
       "median_decode_latency": decode, "ignored": 1}}
with open(flags["--result-filename"], "a") as f:
    f.write(json.dumps(row) + "\\n")
'''


def fake_python(tmp_path: Path, fail: str = "") -> str:
    """An interpreter stand-in: ``<it> -m <module> flags…`` runs the fake benchmark."""
    script = tmp_path / "fake_bench.py"
    script.write_text(FAKE.format(fail=fail))
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nshift\nexec {sys.executable} {script} -m \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def test_both_sides_and_the_ratio(tmp_path: Path) -> None:
    out = tmp_path / "one-batch.json"
    argv = ["--model-path", "/m/llama", "--batch-size", "16", "--input-len", "32768", "--output-len", "8",
            "--out", str(out), "--python", fake_python(tmp_path)]
    assert one_batch.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["workload"] == {"batch_size": 16, "input_len": 32768, "output_len": 8, "prefill_tokens": 65536}
    assert data["meta"]["model"] == "llama (dummy weights)"
    stock, a2ats = data["results"]["stock"], data["results"]["a2ats"]
    assert stock["median_decode_latency"] == 0.040 and a2ats["median_decode_latency"] == 0.016
    assert data["results"]["decode_speedup"] == 2.5
    assert "ignored" not in stock
    assert "--attention-backend flashinfer" in stock["command"] and "--attention-backend" not in a2ats["command"]
    assert "--context-length 32840" in a2ats["command"]
    assert stock["prefill_latency"] == a2ats["prefill_latency"] == 6.5536  # both prefill in the same groups


def test_the_prefill_group_size_reaches_both_sides_and_must_be_positive(tmp_path: Path) -> None:
    out = tmp_path / "one-batch.json"
    argv = ["--model-path", "/m/x", "--prefill-tokens", "32768", "--out", str(out), "--python", fake_python(tmp_path)]
    assert one_batch.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["results"]["stock"]["prefill_latency"] == data["results"]["a2ats"]["prefill_latency"] == 3.2768
    with pytest.raises(SystemExit, match="positive"):
        one_batch.main(["--model-path", "/m/x", "--prefill-tokens", "0", "--out", str(out)])


def test_a_failed_side_is_recorded_and_fails_the_run(tmp_path: Path) -> None:
    out = tmp_path / "one-batch.json"
    argv = ["--model-path", "/m/llama", "--output-len", "8", "--out", str(out), "--python", fake_python(tmp_path, "a2ats")]
    assert one_batch.main(argv) == 1
    data = json.loads(out.read_text())["results"]
    assert "no codebook" in data["a2ats"]["error"] and "decode_speedup" not in data
    assert data["stock"]["median_decode_latency"] == 0.040


@pytest.mark.parametrize("sides", [["stock"], ["a2ats"]])
def test_one_side(tmp_path: Path, sides: list[str]) -> None:
    out = tmp_path / "one-batch.json"
    assert one_batch.main(["--model-path", "/m/x", "--sides", *sides, "--out", str(out), "--python", fake_python(tmp_path)]) == 0
    assert list(json.loads(out.read_text())["results"]) == sides
