"""Calibration on the real SmolLM2-135M-Instruct (small sizes so it runs on 2 CPU cores).

Runs that do not test the bf16 capture itself load the model in float32 (``--dtype float32``):
on a CPU without bf16 matmuls its forward passes are ~5× faster, and nothing asserted here
depends on the model's dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang import calibrate as cli
from a2ats_sglang.capture import load_model, run_document
from a2ats_sglang.corpus import pydoc_documents
from a2ats_sglang.default_model import smollm2_path
from a2ats_sglang.method.codebook import Codebook
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.vq import encode

# 600 text tokens still span two pydoc topics, the second one truncated (259 + 341 tokens)
SMALL = ["--tokens", "600", "--uuid-tokens", "100", "--codebook-size", "32", "--iters", "8", "--device", "cpu",
         "--dtype", "float32"]


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(smollm2_path())


@pytest.fixture(scope="module")
def model(model_path: str):  # noqa: ANN201
    return load_model(model_path, "cpu")


@pytest.fixture(scope="module")
def model32(model_path: str):  # noqa: ANN201
    return load_model(model_path, "cpu", torch.float32)


def test_capture_recovers_pre_rope_keys(model) -> None:  # noqa: ANN001
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.name_or_path)
    ids = torch.tensor(tok(pydoc_documents("heldout")[0].text).input_ids[:300])
    got: dict[int, tuple] = {}
    run_document(model, ids, lambda layer, pos, q, k, v: got.setdefault(layer, (pos, k)), chunk_tokens=512)
    assert sorted(got) == list(range(30))
    pos, k_post = got[0]
    k_pre = RopeSpec.from_hf_config(model.config).unrotate(k_post.float(), pos)
    with torch.inference_mode():
        h = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids[None]))
        k_proj = model.model.layers[0].self_attn.k_proj(h)[0].view(-1, 3, 64).float()
    # bf16 post-RoPE storage is the only loss
    assert (k_pre - k_proj).abs().max() < 0.02 * k_proj.abs().max()


def test_cli_writes_a_loadable_codebook(tmp_path: Path, model_path: str) -> None:
    out = tmp_path / "cb"
    assert cli.main(["--model-path", model_path, "--out", str(out), *SMALL]) == 0
    config = json.loads((Path(model_path) / "config.json").read_text())
    book = Codebook.load(out, model_config=config, codebook_size=32)
    assert book.centroids_z.shape == (30, 3, 32, 64)
    cal = book.meta.calibration
    assert cal["text_tokens"] == 600 and cal["uuid_tokens"] == 100 and cal["keys_per_head"] == 700
    assert cal["documents"] == 2
    assert cal["sources"][0].startswith("pydoc_data.topics:")
    # a second run refuses to overwrite without --force
    assert cli.main(["--model-path", model_path, "--out", str(out), *SMALL]) == 1


def test_cli_pools_h_over_distance_buckets(tmp_path: Path, model_path: str) -> None:
    out = tmp_path / "cb"
    args = ["--model-path", model_path, "--out", str(out), "--tokens", "300", "--uuid-tokens", "0",
            "--codebook-size", "16", "--iters", "2", "--device", "cpu", "--dtype", "float32", "--h-buckets", "8192"]
    assert cli.main(args) == 0
    assert Codebook.load(out).meta.calibration["h_distances"] == [91, 181, 362, 724, 1448, 2896, 5793]


def test_cli_reads_user_data(tmp_path: Path, model_path: str, capsys) -> None:  # noqa: ANN001
    docs = tmp_path / "docs.jsonl"
    text = max(pydoc_documents("calibration"), key=lambda d: len(d.text)).text
    docs.write_text("\n".join(json.dumps({"text": text[i : i + 3000]}) for i in range(0, 12000, 3000)) + "\n")
    out = tmp_path / "cb"
    # 800 tokens: the first record (~690 tokens) whole and the second truncated
    args = ["--model-path", model_path, "--out", str(out), "--data", str(docs), "--tokens", "800",
            "--uuid-tokens", "0", "--codebook-size", "16", "--iters", "3", "--device", "cpu", "--dtype", "float32"]
    assert cli.main(args) == 0
    cal = Codebook.load(out).meta.calibration
    assert cal["data"] == [str(docs)] and cal["uuid_tokens"] == 0 and cal["text_tokens"] == 800
    assert cal["sources"] == [f"{docs}:1", f"{docs}:2"]


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, "'dynamic' is not supported"),
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ],
)
def test_cli_rejects_unsupported_models(tmp_path: Path, model_path: str, capsys, patch: dict, message: str) -> None:  # noqa: ANN001
    ckpt = tmp_path / "model"
    ckpt.mkdir()
    cfg = {**json.loads((Path(model_path) / "config.json").read_text()), **patch}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["--model-path", str(ckpt), "--out", str(tmp_path / "cb"), *SMALL]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--codebook-size", "70000"], "must be in (1, 65536]"),
        (["--tokens", "10", "--uuid-tokens", "0", "--codebook-size", "64"], "cannot fit 64 codewords"),
        (["--b", "32"], "must exceed --window"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path: Path, capsys, args: list[str], message: str) -> None:  # noqa: ANN001
    assert cli.main(["--out", str(tmp_path / "cb"), *args]) == 1
    assert message in capsys.readouterr().err


def test_query_aware_beats_plain_kmeans_on_real_scores(model_path: str, model32) -> None:  # noqa: ANN001
    """The objective query-aware VQ optimises, on held-out SmolLM2 queries and keys."""
    model = model32
    cfg = cli.CalibrationConfig(model_path=model_path, tokens=1500, uuid_tokens=0, codebook_size=32,
                                iters=10, device="cpu", dtype="float32", progress=False)
    data, summary = cli.collect(cfg, model=model)
    books = {kind: cli.fit(cfg, data, summary, kind) for kind in ("query_aware", "kmeans")}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    ids = torch.tensor(tok(pydoc_documents("heldout")[1].text).input_ids[:600])
    spec = RopeSpec.from_hf_config(model.config)
    errors = {kind: [] for kind in books}

    def sink(layer: int, pos: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if layer % 5:
            return
        q_w = spec.wrope_query(q.float(), pos, 2048).view(-1, 3, 3, 64)  # [n, Hkv, group, d]
        k_pre = spec.unrotate(k.float(), pos).transpose(0, 1)  # [Hkv, n, d]
        for kind, book in books.items():
            codes = encode(k_pre, book.chol[layer], book.centroids_z[layer])  # [Hkv, n]
            approx = torch.gather(book.decoded[layer], 1, codes[..., None].expand(-1, -1, 64))
            err = torch.einsum("nhgd,hmd->hgnm", q_w, k_pre - approx)
            errors[kind].append(err.square().mean())

    run_document(model, ids, sink)
    aware, plain = (float(torch.stack(errors[k]).mean()) for k in ("query_aware", "kmeans"))
    assert aware < 0.9 * plain, (aware, plain)


def test_on_a_cpu_it_warns_with_a_time_measured_here(
    tmp_path: Path, model_path: str, capsys, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    """The estimate comes from small runs of calibration's own steps; it must be of the right
    size for the run that follows it (within 3×: both are timed on this machine).

    The estimate checked is the one calibration itself measures for its warning (recorded on
    its way out of ``estimate_time``), not a second measurement of the same thing."""
    estimates: list[cli.TimeEstimate] = []
    real_estimate_time = cli.estimate_time

    def recorded(*args, **kwargs) -> cli.TimeEstimate:  # noqa: ANN002, ANN003
        estimates.append(real_estimate_time(*args, **kwargs))
        return estimates[-1]

    monkeypatch.setattr(cli, "estimate_time", recorded)
    cfg = cli.CalibrationConfig(model_path=model_path, tokens=4000, uuid_tokens=0, codebook_size=128, iters=10,
                                tol=0.0, device="cpu", dtype="float32", progress=False)
    book = cli.calibrate(cfg, tmp_path / "cb")
    assert len(estimates) == 1
    (estimate,) = estimates
    err = capsys.readouterr().err
    assert "[calibrate] warning: no GPU, calibrating on the cpu: about " in err and "k-means up to --iters 10" in err
    actual = book.meta.calibration["seconds_total"]
    assert actual / 3 < estimate.total_s < actual * 3, (estimate, actual)
