"""patches/one_batch_prefill.py: the one-batch benchmark's prefill in groups of requests, merged
into one batch, against a fake ``extend`` that records what it was given."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from a2ats_sglang import patches
from a2ats_sglang.patches import one_batch_prefill as prefill


@dataclass
class Req:
    origin_input_ids: list[int]


@dataclass
class Batch:
    reqs: list[Req]
    merged: list[int] = field(default_factory=list)

    def merge_batch(self, other: "Batch") -> None:
        self.merged.append(len(other.reqs))
        self.reqs = self.reqs + other.reqs


def fake_extend(calls: list[list[int]]):
    def extend(reqs: list[Req], runner: object) -> tuple[torch.Tensor, torch.Tensor, Batch]:
        assert runner == "runner"
        lens = [len(r.origin_input_ids) for r in reqs]
        calls.append(lens)
        ids = torch.tensor([r.origin_input_ids[-1] for r in reqs])
        return ids, ids[:, None].float().repeat(1, 3), Batch(list(reqs))
    return extend


@pytest.mark.parametrize("lengths, tokens, expected", [
    ([4, 4, 4, 4], 8, [[4, 4], [4, 4]]),
    ([4, 4, 4], 100, [[4, 4, 4]]),
    ([10, 3, 3, 10], 6, [[10], [3, 3], [10]]),  # a prompt over the cap gets a group of its own
    ([5], 1, [[5]]),
])
def test_groups_hold_whole_requests_within_the_cap(lengths, tokens, expected, monkeypatch) -> None:
    monkeypatch.setenv(prefill.ENV, str(tokens))
    calls: list[list[int]] = []
    reqs = [Req(list(range(i * 100, i * 100 + n))) for i, n in enumerate(lengths)]
    ids, logits, batch = prefill.grouped_extend(fake_extend(calls), reqs, "runner")
    assert calls == expected
    assert batch.reqs == reqs  # one batch, the requests in their order
    assert batch.merged == [len(g) for g in expected[1:]]
    assert ids.tolist() == [r.origin_input_ids[-1] for r in reqs]
    assert logits.shape == (len(reqs), 3) and logits[:, 0].tolist() == [float(i) for i in ids.tolist()]


def test_the_default_and_bad_group_sizes(monkeypatch) -> None:
    monkeypatch.delenv(prefill.ENV, raising=False)
    assert prefill.prefill_tokens() == prefill.DEFAULT_TOKENS == 65536
    for bad in ("0", "-5", "many"):
        monkeypatch.setenv(prefill.ENV, bad)
        with pytest.raises(ValueError, match="positive number of tokens"):
            prefill.prefill_tokens()


def test_install_all_leaves_the_benchmark_alone(monkeypatch) -> None:
    """Servers never import the one-batch benchmark: the on-demand patch is not installed with the rest."""
    installed: list[str] = []
    for name in patches.module_names():
        monkeypatch.setattr(patches.load(name), "install", lambda name=name: installed.append(name))
    patches.install_all()
    assert "one_batch_prefill" not in installed and len(installed) == len(patches.module_names()) - 1
