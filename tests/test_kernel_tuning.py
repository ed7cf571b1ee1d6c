"""The tuning sweep's knobs exist, include today's default (so keeping it is a measured choice
too), and are restored after each value."""

from __future__ import annotations

import importlib

import pytest

from benchmarks.kernel_tuning import DUE_KNOBS, ENCODE_KNOBS, KNOBS, patched, sweep


@pytest.mark.parametrize("module, name, values, stage", KNOBS + DUE_KNOBS + ENCODE_KNOBS)
def test_each_knob_is_a_constant_whose_default_is_swept(module: str, name: str, values: tuple, stage: str) -> None:
    assert getattr(importlib.import_module(module), name) in values
    assert stage in ("lookup_table", "score", "topk", "score_topk", "attention", "encode_due", "encode_chunk")


def test_a_patched_value_is_seen_by_the_grid_and_restored() -> None:
    from a2ats_sglang.kernels import lut, score

    before = score.score_runs(256, 4, 32768, 512, 132)
    with patched("a2ats_sglang.kernels.score", "RUN_TARGET", 1000):
        assert score.score_runs(256, 4, 32768, 512, 132) == 16  # the most programs: a block each
    assert score.score_runs(256, 4, 32768, 512, 132) == before
    with pytest.raises(RuntimeError), patched("a2ats_sglang.kernels.lut", "WAVES", 1):
        raise RuntimeError
    assert lut.WAVES == 4


def test_a_value_that_fails_is_recorded_and_the_sweep_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.kernel_tuning as tuning
    from a2ats_sglang.kernels import lut

    def fake_time(stage, layers, iters):  # noqa: ANN001
        if lut.WAVES == 2:
            raise RuntimeError("out of resources: shared memory")
        return float(lut.WAVES)

    monkeypatch.setattr(tuning, "time_graph", fake_time)
    monkeypatch.setattr(tuning.torch.cuda, "synchronize", lambda: None)
    got = sweep(lambda: None, 32, "a2ats_sglang.kernels.lut", "WAVES", (1, 2, 4), 5)
    assert got["1"] == 1.0 and got["4"] == 4.0
    assert got["2"].startswith("error: RuntimeError: out of resources")
    assert lut.WAVES == 4


def test_unknown_knobs_are_refused_with_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    import benchmarks.kernel_tuning as tuning

    with pytest.raises(SystemExit):
        tuning.main(["--knobs", "SELECT_STAGES", "NO_SUCH_KNOB"])
    err = capsys.readouterr().err
    assert "unknown knobs ['NO_SUCH_KNOB']" in err and "FUSED_PROGRAMS_PER_SM" in err
