"""Deterministic mode cuts an a2ats server's chunked prefills where SGLang's scheduler cuts them
for its Triton backend, whose unified extend kernel ours runs (patches/deterministic_chunks.py),
driven through SGLang's real ``Scheduler.init_deterministic_inference_config``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sglang.srt.managers import scheduler as scheduler_module

from patches.deterministic_chunks import align


def configured(monkeypatch, backend: str, deterministic: bool) -> int | None:
    # SGLang reads the flag from its runtime context; a server builds both from the same args
    bag = SimpleNamespace(deterministic=SimpleNamespace(enable_deterministic_inference=deterministic))
    monkeypatch.setattr(scheduler_module, "get_exec", lambda: bag)
    sched = SimpleNamespace(server_args=SimpleNamespace(attention_backend=backend, enable_deterministic_inference=deterministic))
    align(scheduler_module.Scheduler.init_deterministic_inference_config, sched)
    return sched.truncation_align_size


def test_a2ats_gets_tritons_alignment_in_deterministic_mode(monkeypatch) -> None:
    stock = configured(monkeypatch, "triton", True)
    assert stock == 4096  # SGLang's own value for Triton (not ours)
    assert configured(monkeypatch, "a2ats", True) == stock
    monkeypatch.setenv("SGLANG_TRITON_PREFILL_TRUNCATION_ALIGN_SIZE", "8192")
    assert configured(monkeypatch, "a2ats", True) == configured(monkeypatch, "triton", True) == 8192
    assert configured(monkeypatch, "flashinfer", True) == 4096  # FlashInfer's own setting is not ours


@pytest.mark.parametrize("backend", ["a2ats", "triton"])
def test_nothing_is_aligned_without_deterministic_mode(monkeypatch, backend: str) -> None:
    assert configured(monkeypatch, backend, False) is None


def test_other_backends_keep_sglangs_choice(monkeypatch) -> None:
    assert configured(monkeypatch, "fa3", True) is None  # not in SGLang's table, and not ours
