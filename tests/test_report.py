"""docs/*.md generated from their templates and the result files, and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report

META = {"device": "NVIDIA H100 80GB HBM3", "commit": "abcdef1234", "command": "python -m x"}


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def samples(preds: list[str]) -> dict:
    return {"passkey": {"4096": [{"index": i, "prediction": p} for i, p in enumerate(preds)]}}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    res.mkdir()
    write(res / "accuracy-stock-x.json", {
        "meta": META, "label": "stock", "complete": True, "samples": samples(["1", "2", "3"]),
        "results": {"passkey": {"2048": {"score": 1.0, "n": 25}, "4096": {"score": 0.8, "n": 25}},
                    "vt": {"2048": {"score": 0.5, "n": 25}, "4096": {"score": 0.25, "n": 25}}},
    })
    write(res / "accuracy-a2ats-broken.json", {"meta": META, "label": "broken", "complete": False, "error": "HTTP 500",
                                        "results": {"passkey": {"2048": {"score": 0.0, "n": 25}}}})
    write(res / "accuracy-det-stock-smollm2.json", {"meta": META, "label": "det-stock", "complete": True,
                                                   "samples": samples(["1", "2", "3"]),
                                                   "results": {"passkey": {"4096": {"score": 1.0, "n": 3}}}})
    write(res / "accuracy-det-a2ats-full-smollm2.json", {"meta": META, "label": "det-a2ats", "complete": True,
                                                        "samples": samples(["1", "9", "3"]),
                                                        "results": {"passkey": {"4096": {"score": 0.67, "n": 3}}}})
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
    write(res / "fidelity.json", {"meta": {**META, "workload": {}}, "results": {
        "oracle": {"0.03": {"recall": 0.927, "output_rel_error": 0.07, "selected_fraction": 0.0416}},
        "a2ats": {"0.03": {"recall": 0.837, "output_rel_error": 0.193, "selected_fraction": 0.0416}}}})
    write(res / "fidelity-cb1024.json", {"meta": {**META, "device": "NVIDIA H200", "workload": {"codebook_size": 1024, "b": 2048}},
                                        "results": {"a2ats": {"0.03": {"recall": 0.833, "output_rel_error": 0.198}}}})
    write(res / "decode-step.json", {"meta": {**META, "workload": {"context": 32768, "graph_context": None}}, "results": [{
        "batch": 8, "layers": 32, "kept_tokens_per_kv_head": 1056, "encode_group": 16, "stock_ms": 11.7457, "a2ats_ms": 6.0079,
        "a2ats_step_ms": {"due": 7.5249, "idle": 5.9068},
        "a2ats_stages_ms": {"encode_due": 1.819, "encode_idle": 0.2133, "lookup_table": 0.9536, "score": 1.4594,
                            "topk": 2.2603, "attention": 0.5556},
        "a2ats_stages_gbps": {"encode_due": 300.0, "lookup_table": 900.0, "score": 1200.0, "topk": 1500.0,
                              "score_topk": 1400.0, "attention": 2000.0},
        "a2ats_step_bytes": 3.5e9, "stock_bytes": 34.4e9, "a2ats_step_gbps": 583.0, "stock_gbps": 2928.0,
        "a2ats_roofline_ms": 1.05, "a2ats_vs_roofline": 5.7, "serving_variant": "fused_first_pass",
        "a2ats_step_ms_by_variant": {"fused_first_pass": {"mean": 6.0079, "idle": 5.9068, "due": 7.5249},
                                     "separate_first_pass": {"mean": 6.31, "idle": 6.2, "due": 7.9}}}]})
    write(res / "decode-step-onchip.json", {"meta": {**META, "workload": {"context": 32768, "onchip_from_rows": 1}},
                                           "results": [{
        "batch": 32, "layers": 32, "kept_tokens_per_kv_head": 1056, "encode_group": 16, "stock_ms": 30.5, "a2ats_ms": 5.5,
        "a2ats_step_ms": {"due": 10.2, "idle": 5.2}, "onchip": True,
        "a2ats_stages_ms": {"encode_due": 5.2, "encode_idle": 0.01, "lookup_table": 1.37, "score": 1.58, "topk": 5.76,
                            "score_topk": 2.1, "attention": 1.46}}]})
    write(res / "calibration_cost.json", {"meta": META, "seconds": {}})  # no document reads it here
    return res


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "results.in.md").write_text(
        "# Measurements\n\n<!-- report:devices -->\n\nprose before\n\n<!-- report:accuracy_budgets -->\n\nmiddle\n\n"
        "<!-- report:equality -->\n\n<!-- report:throughput -->\n\n<!-- report:decode_step -->\nend\n")
    (d / "fidelity.in.md").write_text("# Fidelity\n\n<!-- report:devices -->\n\n<!-- report:fidelity -->\n\n"
                                      "<!-- report:fidelity_runs -->\n")
    (d / "design.md").write_text("# hand-written, no template\n")
    return d


def test_report_writes_documents_from_templates_and_plots(results: Path, docs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--results", str(results), "--docs", str(docs)]) == 0
    text = (docs / "results.md").read_text()
    assert text.startswith("<!-- Generated by `python -m benchmarks.report` from ")
    assert "results.in.md" in text.splitlines()[0]
    assert "<!-- report:" not in text and "\nprose before\n" in text and "\nmiddle\n" in text and text.endswith("end\n")
    assert (docs / "design.md").read_text() == "# hand-written, no template\n"  # documents without a template stay
    # every table here is from one GPU, and the document says which
    assert "Every table below was measured on an **NVIDIA H100 80GB HBM3**" in text
    # accuracy: one table per length, a column per run; a run without a length is left out of its table
    assert "**2,048 tokens**\n\n| task | broken | stock |" in text and "**4,096 tokens**\n\n| task | stock |" in text
    assert "| passkey | 0.00 | 1.00 |" in text and "| vt | – | 0.50 |" in text
    assert "| **mean** | **0.00** | **0.75** |" in text and "| passkey | 0.80 |" in text and "| **mean** | **0.53** |" in text
    assert "PARTIAL: HTTP 500" in text and "commit abcdef1" in text
    assert "det-stock" not in text.split("**4,096 tokens**")[1].split("Sources:")[0]  # another block's files
    # equality: predictions compared one by one
    assert ("| full budget vs stock FlashInfer, deterministic | `accuracy-det-stock-smollm2.json` | "
            "`accuracy-det-a2ats-full-smollm2.json` | **2 / 3** |") in text
    # throughput, with the commit of each file
    assert "| stock | abcdef1 | 32,768 | 12 | 123.5 | 20.5 | 61.2 | 423,499 | 76.2 |" in text
    assert "one request needs 1000255 tokens" in text
    assert "| external | abcdef1 | 32,768 | 21 | 128.2 | 9.0 | 40.0 | – | – |" in text
    # decode step: mean (idle / due), the ratio to stock, the split
    assert "| 8 | 11.75 ms | 6.01 ms (5.91 / 7.52) | 1.96× | 0.21 / 1.82 | 0.95 | 1.46 | 2.26 | 0.56 |" in text
    # a file whose step picked on chip says so, with the pair's time
    assert ("picks on chip (`kernels/onchip.py` at abcdef1, removed since) at batch 32: the score and top-K columns "
            "time the split kernels alone, the on-chip pair takes 2.10 ms") in text
    # and its bytes against the roofline
    assert "| 8 | 3.50 / 34.4 | 583 / 2,928 | 1.05 ms (5.7× it) | 6.31 ms | 300 | 900 | 1,200 | 1,500 | 1,400 | 2,000 |" in text
    # every table names its sources
    assert "- `throughput-stock.json`: NVIDIA H100 80GB HBM3, commit abcdef1, `python -m x`; server: `-m sglang.launch_server`" in text

    fid = (docs / "fidelity.md").read_text()
    assert "| `a2ats` | 0.837 / 0.193 | 4.2 % |" in fid
    assert "| `fidelity-cb1024.json` | NVIDIA H200 | 1,024 | 2,048 | 0.833 | – | – | – |" in fid
    # two GPUs behind this document: each file listed under its own
    assert "- **NVIDIA H100 80GB HBM3**: `fidelity.json`" in fid and "- **NVIDIA H200**: `fidelity-cb1024.json`" in fid

    out = capsys.readouterr().out
    assert "result files no document reads: calibration_cost.json" in out
    assert (results / "accuracy.png").stat().st_size > 5000 and (results / "throughput.png").stat().st_size > 5000
    # idempotent
    report.main(["--results", str(results), "--docs", str(docs)])
    assert (docs / "results.md").read_text() == text and (docs / "fidelity.md").read_text() == fid


def test_an_unknown_block_is_an_error(results: Path) -> None:
    with pytest.raises(ValueError, match="no report block named 'acuracy'"):
        report.render("<!-- report:acuracy -->\n", results, "docs/x.in.md")


def test_missing_results_say_so(tmp_path: Path) -> None:
    doc = report.render("<!-- report:devices -->\n<!-- report:fidelity -->\n<!-- report:offload_throughput -->\n", tmp_path, "x")
    assert "_no fidelity results yet_" in doc.text and "_no offload throughput results yet_" in doc.text
    assert "_No result files behind this document yet._" in doc.text and doc.sources == ()


def test_committed_documents_are_current() -> None:
    """docs/results.md and docs/fidelity.md are what the report makes of the committed results."""
    templates = sorted(report.DOCS.glob("*.in.md"))
    assert {t.name for t in templates} >= {"results.in.md", "fidelity.in.md"}
    for template in templates:
        doc = report.render(template.read_text(encoding="utf-8"), report.RESULTS, f"docs/{template.name}")
        out = template.with_name(template.name.removesuffix(".in.md") + ".md")
        assert out.read_text(encoding="utf-8") == doc.text, f"{out} is stale: run python -m benchmarks.report"


def test_suite_tables_give_ratios_to_stock_and_hicache(tmp_path: Path) -> None:
    res = tmp_path / "results"
    res.mkdir()
    side = {"output_tokens_per_s": 100.0, "steady_decode_tokens_per_s": 800.0, "ttft_p50_ms": 900.0, "ttft_p99_ms": 2000.0,
            "tpot_p50_ms": 50.0, "tpot_p99_ms": 70.0, "max_concurrency": 27, "kv_capacity_tokens": 912909,
            "kv_capacity_tiers": {"gpu": 912909, "host": 0}, "prompt_tokens_computed": 10, "prompt_tokens_cached": 5,
            "total_s": 12.0, "peak_gpu_memory_mib": 2048, "commit": "abcdef1"}
    write(res / "suite-h200-multi-turn.json", {"meta": {**META, "device": "NVIDIA H200", "model": "llama", "workload": {"turns": 4}},
                                               "workload": "multi-turn", "sides": {
        "stock": side, "hicache": {**side, "output_tokens_per_s": 50.0},
        "a2ats-offload": {**side, "output_tokens_per_s": 150.0, "kv_capacity_tiers": {"gpu": 300000, "host": 700000},
                          "hot_hit_rate": 0.9, "fetched_mib_per_decode_step": 7.4},
        "a2ats": {"error": "the server did not start: boom", "commit": "abcdef1"}}})
    text = report.suite_block(res).text
    assert "**multi-turn** (llama; turns 4; commit abcdef1)" in text
    offload = next(line for line in text.splitlines() if line.startswith("| `a2ats-offload`"))
    assert "150.0 (1.50× stock, 3.00× hicache)" in offload and "27 of 300,000 + 700,000" in offload and "hit 90.0 %" in offload
    hicache = next(line for line in text.splitlines() if line.startswith("| `hicache`"))
    assert "50.0 (0.50× stock)" in hicache
    assert "| `a2ats` | failed: the server did not start: boom |" in text
    assert "suite.png" in text and "`suite-h200-multi-turn.json`: NVIDIA H200" in text
    assert res / "suite.png" in report.plots(res)


def test_kernel_tuning_marks_the_fastest_value_and_shows_failures(tmp_path: Path) -> None:
    res = tmp_path / "results"
    res.mkdir()
    write(res / "kernel-tuning-h200.json", {"meta": {**META, "device": "NVIDIA H200", "workload": {"context": 32768}}, "results": [
        {"batch": 8, "layers": 32, "WAVES": {"stage": "lookup_table", "default": "4", "ms": {"1": 0.6, "4": 0.5, "8": 0.7}},
         "LARGE_CONFIG": {"stage": "encode_chunk", "default": "[128, 64, 8, 2]",
                          "ms": {"[128, 64, 8, 2]": 50.1, "[64, 64, 8, 3]": "error: OutOfResources: shared memory"}}}]})
    text = report.kernel_tuning_block(res).text
    assert "| 8 | `WAVES` | lookup_table | 4 | 1: 0.600, **4: 0.500**, 8: 0.700 |" in text
    assert "**[128, 64, 8, 2]: 50.100**, [64, 64, 8, 3]: error: OutOfResources: shared memory" in text
    assert "`kernel-tuning-h200.json`: NVIDIA H200" in text


def test_score_probe_pivots_layouts_and_names_the_fastest_per_slot_layout(tmp_path: Path) -> None:
    res = tmp_path / "results"
    res.mkdir()
    variants = [{"slots": s, "codes": c, "run_target": rt, "warps": w, "ms": ms} for s, c, rt, w, ms in (
        ("random", "token", 32, 4, 3.3), ("random", "head", 32, 4, 3.5), ("random", "token", 4, 8, 2.9),
        ("contiguous", "token", 32, 4, 1.9), ("contiguous", "head", 32, 4, 1.6), ("contiguous", "head", 1, 8, 3.0))]
    variants.append({"slots": "random", "codes": "head", "run_target": 1, "warps": 4, "error": "OutOfResources"})
    write(res / "score-probe-h200.json", {"meta": {**META, "device": "NVIDIA H200", "workload": {"context": 32768}},
                                          "results": [{"batch": 32, "variants": variants}]})
    text = report.score_probe_block(res).text
    assert "| 32 | random | 3.30 | 3.50 | 2.90 (token codes, run target 4, 8 warps) |" in text
    assert "| 32 | contiguous | 1.90 | 1.60 | 1.60 (head codes, run target 32, 4 warps) |" in text
    assert "`score-probe-h200.json`: NVIDIA H200" in text


def test_one_batch_gives_the_decode_speedup_of_the_whole_model(tmp_path: Path) -> None:
    from benchmarks.report import one_batch_block

    side = {"batch_size": 16, "input_len": 32768, "output_len": 64}
    meta = {"device": "NVIDIA H200", "commit": "abcdef0", "command": "python3 -m benchmarks.one_batch",
            "workload": {"batch_size": 16, "input_len": 32768, "output_len": 64, "prefill_tokens": 65536}}
    (tmp_path / "one-batch-h200.json").write_text(json.dumps({"meta": meta, "results": {
        "stock": {**side, "median_decode_latency": 0.0208, "prefill_latency": 19.2},
        "a2ats": {**side, "median_decode_latency": 0.0130, "prefill_latency": 22.1}}}))
    text = one_batch_block(tmp_path).text
    assert "| one-batch-h200.json | 16 × 32,768 | 64 | 20.80 | 13.00 | **1.60×** | 19.2 | 22.1 |" in text
    assert "NVIDIA H200, commit abcdef0" in text
    assert one_batch_block(tmp_path / "none").text.startswith("_no one-batch")
