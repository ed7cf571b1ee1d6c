"""The tuning sweep's knobs exist, include today's default (so keeping it is a measured choice
too), and are restored after each value."""

from __future__ import annotations

import importlib

import pytest

from benchmarks.kernel_tuning import ENCODE_KNOBS, KNOBS, patched


@pytest.mark.parametrize("module, name, values, stage", KNOBS + ENCODE_KNOBS)
def test_each_knob_is_a_constant_whose_default_is_swept(module: str, name: str, values: tuple, stage: str) -> None:
    assert getattr(importlib.import_module(module), name) in values
    assert stage in ("lookup_table", "score", "topk", "score_topk", "attention", "encode_chunk")


def test_a_patched_value_is_seen_by_the_grid_and_restored() -> None:
    from a2ats_sglang.kernels import lut, score

    before = score.score_runs(256, 4, 32768, 512, 132)
    with patched("a2ats_sglang.kernels.score", "RUN_TARGET", 1000):
        assert score.score_runs(256, 4, 32768, 512, 132) == 16  # the most programs: a block each
    assert score.score_runs(256, 4, 32768, 512, 132) == before
    with pytest.raises(RuntimeError), patched("a2ats_sglang.kernels.lut", "WAVES", 1):
        raise RuntimeError
    assert lut.WAVES == 4
