"""The launchers before SGLang starts: flag split, SGLang argv checks, codebook resolution and
cache, config transport to spawned processes, and start-up errors that stop a launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_codebook import make_codebook

from a2ats_sglang import launch_server
from a2ats_sglang.method.codebook import Codebook, CodebookError
from a2ats_sglang.runtime import codebook_cache
from a2ats_sglang.runtime.codebook_cache import CalibrationFailed, resolve_codebook
from a2ats_sglang.runtime.config import (
    CONFIG_ENV,
    ENABLE_ENV,
    A2ATSConfig,
    export_config,
)
from a2ats_sglang.runtime import preflight
from a2ats_sglang.runtime.flags import split_argv
from a2ats_sglang.runtime.preflight import Unsupported, check_settings, sglang_view

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "configs"


def model_dir(tmp_path: Path, name: str) -> Path:
    """A checkpoint directory holding only ``config.json`` (enough for everything pre-launch)."""
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text((CONFIGS / f"{name}.json").read_text())
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("A2ATS_SGLANG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(codebook_cache, "RANDOM_CODEBOOK_SIZE", 16)
    return tmp_path / "cache"


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "a2ats_sglang.launch_server", *args],
        check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})},
    )


AS_IF_ON_A_GPU = (
    "import sys; from a2ats_sglang.runtime import preflight; preflight.cuda_device_count = lambda: 1; "
    "from a2ats_sglang import launch_server; sys.exit(launch_server.main(sys.argv[1:]))"
)


def run_cli_as_if_on_a_gpu(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The launcher CLI with CUDA reporting one device, for what comes after the GPU check."""
    return subprocess.run(
        [sys.executable, "-c", AS_IF_ON_A_GPU, *args],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **(env or {})},
    )


# -- flags ---------------------------------------------------------------------------------


def test_split_argv_both_forms_and_order() -> None:
    config, rest = split_argv([
        "--tp", "2", "--a2ats-window", "32", "--port=30000", "--a2ats-budget-max=none",
        "--a2ats-wrope=single", "--a2ats-budget-ratio", "0.05", "--a2ats-selector", "mean",
        "--a2ats-codebook=/cb", "--a2ats-sinks=4", "--a2ats-b", "1024", "--a2ats-budget-min=8",
    ])
    assert rest == ["--tp", "2", "--port=30000"]
    assert config == A2ATSConfig(
        codebook="/cb", budget_ratio=0.05, budget_min=8, budget_max=None, window=32, sinks=4,
        b=1024, wrope="single", selector="mean",
    )


def test_split_argv_defaults() -> None:
    assert split_argv(["--model-path", "m"]) == (A2ATSConfig(), ["--model-path", "m"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--a2ats-budget-ratio", "1.5"], "--a2ats-budget-ratio must be in (0, 1], got 1.5"),
        (["--a2ats-budget-min=512", "--a2ats-budget-max=256"], "--a2ats-budget-max (256) must be >="),
        (["--a2ats-budget-max", "lots"], "expected an integer or 'none', got 'lots'"),
        (["--a2ats-window", "0"], "--a2ats-window must be positive"),
        (["--a2ats-wrope=exact"], "invalid choice: 'exact'"),
        (["--a2ats-windw", "3"], "unrecognized A²ATS flag --a2ats-windw"),
    ],
)
def test_bad_flag_values_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        split_argv(["--tp", "1", *argv], prog="launch")
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_config_reaches_a_spawned_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENABLE_ENV, CONFIG_ENV):
        monkeypatch.setenv(name, "")  # restored after the test
    config = A2ATSConfig(codebook="/x/cb", budget_ratio=0.1, budget_max=None, window=16, wrope="single")
    export_config(config)
    code = "from a2ats_sglang.runtime.config import current_config, enabled; print(enabled(), current_config().to_json())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    flag, text = out.stdout.strip().split(" ", 1)
    assert flag == "True" and A2ATSConfig.from_json(text) == config


# -- SGLang argv -----------------------------------------------------------------------------


def backend_argv(argv: list[str]) -> list[str]:
    return launch_server._backend_argv(argv, sglang_view(argv), lambda: "/default/model")[0]


def test_sglang_argv_defaults() -> None:
    assert backend_argv(["--port", "1"]) == [
        "--port", "1", "--attention-backend", "a2ats", "--model-path", "/default/model",
        "--cuda-graph-backend-prefill", "disabled", "--warmups", "a2ats",
    ]


def test_sglang_argv_keeps_user_choices() -> None:
    argv = ["--model", "/m", "--attention-backend=a2ats", "--disable-cuda-graph", "--warmups", "a2ats"]
    assert backend_argv(argv) == argv
    argv = ["--model-path=/m", "--cuda-graph-backend-prefill", "breakable", "--prefill-attention-backend", "flashinfer"]
    assert backend_argv(argv) == ["--model-path=/m", "--cuda-graph-backend-prefill", "breakable", "--attention-backend", "a2ats",
                                  "--warmups", "a2ats"]


@pytest.mark.parametrize("given, expected", [
    (["--warmups", "voice_chat"], ["--warmups", "voice_chat,a2ats"]),
    (["--warmups=prefill_shapes,voice_chat", "--port", "1"], ["--warmups=prefill_shapes,voice_chat,a2ats", "--port", "1"]),
    (["--warmups=a2ats,voice_chat"], ["--warmups=a2ats,voice_chat"]),
])
def test_our_warmup_joins_the_users(given: list[str], expected: list[str]) -> None:
    assert launch_server._with_warmup(given) == expected


@pytest.mark.parametrize(
    "argv",
    [["--attention-backend", "triton"], ["--decode-attention-backend=fa3"], ["--prefill-attention-backend", "triton"]],
)
def test_sglang_argv_refuses_other_backends(argv: list[str]) -> None:
    with pytest.raises(launch_server.UsageError, match="a2ats"):
        launch_server._check_backend_flags(sglang_view(["--model-path", "/m", *argv]))


def test_plugin_whitelist_gets_our_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_PLUGINS", "smg-zmq")
    launch_server._allow_entry_point()
    assert os.environ["SGLANG_PLUGINS"] == "smg-zmq,a2ats"
    launch_server._allow_entry_point()
    assert os.environ["SGLANG_PLUGINS"] == "smg-zmq,a2ats"


# -- codebook resolution ---------------------------------------------------------------------


def test_explicit_codebook(tmp_path: Path, cache: Path) -> None:
    model = model_dir(tmp_path, "smollm2-135m")
    cb = make_codebook().save(tmp_path / "cb")
    assert resolve_codebook(str(model), str(cb), None) == str(cb.resolve())
    other = model_dir(tmp_path, "llama-3.1-8b")
    with pytest.raises(CodebookError, match=r"--a2ats-codebook .*num_layers: codebook 30, model 32"):
        resolve_codebook(str(other), str(cb), None)
    assert not cache.exists()  # an explicit codebook never touches the cache


def test_dummy_weights_get_a_random_codebook_once(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(model_dir(tmp_path, "smollm2-135m"))
    first = resolve_codebook(model, None, "dummy")
    assert Path(first).parent == cache / "codebooks" and first.endswith("-random")
    book = Codebook.load(first)
    assert book.meta.calibration["random"] and book.meta.codebook_size == 16
    monkeypatch.setattr(codebook_cache, "random_codebook", lambda *a, **k: pytest.fail("rewritten"))
    assert resolve_codebook(model, None, "dummy") == first
    # real weights never use the random codebook: they calibrate
    monkeypatch.setattr(codebook_cache, "_calibrate", lambda m, out: make_codebook().save(out))
    real = resolve_codebook(model, None, "auto")
    assert real != first and not Codebook.load(real).meta.calibration.get("random")
    assert resolve_codebook(model, None, "dummy") == real  # a calibrated codebook serves dummy runs too


def test_calibrates_once_then_reuses(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(model_dir(tmp_path, "smollm2-135m"))
    calls: list[str] = []

    def calibrate(model_path: str, out: Path) -> None:
        calls.append(model_path)
        make_codebook().save(out)

    monkeypatch.setattr(codebook_cache, "_calibrate", calibrate)
    path = resolve_codebook(model, None, None)
    assert Path(path).name.startswith("smollm2-135m-") and calls == [model]
    assert resolve_codebook(model, None, None) == path and calls == [model]
    # a corrupt cached codebook is replaced, not served
    (Path(path) / "codebook.safetensors").write_bytes(b"junk")
    assert resolve_codebook(model, None, None) == path and len(calls) == 2
    Codebook.load(path)
    assert sorted(p.name for p in Path(path).parent.iterdir()) == sorted([Path(path).name, Path(path).name + ".lock"])


def test_failed_calibration_is_reported(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(model_dir(tmp_path, "smollm2-135m"))
    monkeypatch.setattr(codebook_cache.subprocess, "run", lambda cmd, check: subprocess.CompletedProcess(cmd, 3))
    with pytest.raises(CalibrationFailed, match=r"exit 3.*--a2ats-codebook DIR"):
        resolve_codebook(model, None, None)
    assert [p.suffix for p in (cache / "codebooks").iterdir()] == [".lock"]  # no half-written codebook


# -- the CLI ---------------------------------------------------------------------------------


def test_codebook_for_another_model_stops_the_launch(tmp_path: Path) -> None:
    model = model_dir(tmp_path, "llama-3.1-8b")
    cb = make_codebook().save(tmp_path / "cb")  # built for SmolLM2
    out = run_cli_as_if_on_a_gpu("--model-path", str(model), "--a2ats-codebook", str(cb), env={"A2ATS_SGLANG_CACHE": str(tmp_path / "c")})
    assert out.returncode == 1, out.stderr
    assert "error: --a2ats-codebook" in out.stderr and "num_layers: codebook 30, model 32" in out.stderr
    assert "sglang" not in out.stderr.replace("a2ats_sglang", "")  # stopped before SGLang was imported


def test_other_attention_backend_is_refused(tmp_path: Path) -> None:
    out = run_cli("--model-path", str(tmp_path), "--attention-backend", "triton")
    assert out.returncode == 2
    assert "--attention-backend triton: this launcher always serves with the a2ats backend" in out.stderr


def test_launchers_hand_sglang_an_a2ats_configuration(tmp_path: Path) -> None:
    """The whole pre-launch path into SGLang's own parsers, with the server/benchmark stubbed."""
    model = model_dir(tmp_path, "smollm2-135m")
    cb = make_codebook().save(tmp_path / "cb")
    script = tmp_path / "stubbed.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import sglang.benchmark.offline_throughput as ot
        import sglang.benchmark.one_batch as ob
        import sglang.srt.entrypoints.http_server as http_server
        import sglang.srt.utils as utils

        from a2ats_sglang import bench_offline_throughput, bench_one_batch, launch_server
        from a2ats_sglang.runtime import preflight

        preflight.check_gpu = lambda device: None  # SGLang parses --device cpu on this CPU machine

        seen = {}
        def launch(server_args, run_scheduler_process_func):
            f = run_scheduler_process_func
            seen["server"] = [server_args.get_attention_backends(), server_args.cuda_graph_config.prefill.backend,
                              server_args.model_path, f"{f.__module__}.{f.__qualname__}"]
        http_server.launch_server = launch
        utils.kill_process_tree = lambda *a, **k: None
        ob.main = lambda server_args, bench_args: seen.update(one_batch=[server_args.get_attention_backends(), bench_args.batch_size])
        ot.throughput_test = lambda server_args, bench_args: seen.update(offline=[server_args.get_attention_backends(), bench_args.num_prompts])

        args = sys.argv[1:]
        seen["rc"] = launch_server.main(args)
        bench_one_batch.main([*args, "--batch-size", "4"])
        bench_offline_throughput.main([*args, "--num-prompts", "7"])
        seen["env"] = [os.environ["A2ATS_SGLANG_ENABLE"], json.loads(os.environ["A2ATS_SGLANG_CONFIG"])]
        print("SEEN", json.dumps(seen))
    """))
    out = subprocess.run(
        [sys.executable, str(script), "--model-path", str(model), "--a2ats-codebook", str(cb),
         "--a2ats-window", "32", "--device", "cpu", "--load-format", "dummy"],
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.split("SEEN ", 1)[1])
    assert seen["rc"] == 0
    assert seen["server"] == [["a2ats", "a2ats"], "disabled", str(model), "a2ats_sglang.runtime.plugin.run_scheduler_process"]
    assert seen["one_batch"] == [["a2ats", "a2ats"], [4]]
    assert seen["offline"] == [["a2ats", "a2ats"], 7]
    assert seen["env"] == ["1", json.loads(A2ATSConfig(codebook=str(cb.resolve()), window=32).to_json())]


def test_offload_serves_with_its_radix_cache_unless_told_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from a2ats_sglang.runtime import plugin
    from a2ats_sglang.runtime.tiered.radix import RADIX_BACKEND

    monkeypatch.setattr(plugin, "install", lambda: None)  # SGLang itself is not needed here
    monkeypatch.setattr(preflight, "cuda_device_count", lambda: 1)
    base = ["--model-path", str(model_dir(tmp_path, "smollm2-135m")), "--a2ats-codebook", str(make_codebook().save(tmp_path / "cb"))]
    argv = launch_server.prepare([*base, "--a2ats-offload"]).argv
    assert argv[argv.index("--radix-cache-backend") + 1] == RADIX_BACKEND and "--disable-radix-cache" not in argv
    mine = launch_server.prepare([*base, "--a2ats-offload", f"--radix-cache-backend={RADIX_BACKEND}"]).argv
    assert f"--radix-cache-backend={RADIX_BACKEND}" in mine and "--radix-cache-backend" not in mine
    with pytest.raises(Unsupported, match=f"needs --radix-cache-backend {RADIX_BACKEND} .*, not other"):
        launch_server.prepare([*base, "--a2ats-offload", "--radix-cache-backend=other"])
    assert "--radix-cache-backend" not in launch_server.prepare(base).argv, "GPU-resident mode keeps SGLang's default"


# -- early refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no CUDA GPU is visible: a2ats serves on an NVIDIA GPU"),
        (["--tp-size", "2"], "--tp-size 2: a2ats serves on one GPU for now"),
        (["--tensor-parallel-size=4"], "--tp-size 4: a2ats serves on one GPU for now"),
        (["--dp-size", "2"], "--dp-size 2: a2ats serves on one GPU for now"),
        (["--a2ats-offload", "--a2ats-host-kv-gb", "100000"], "--a2ats-host-kv-gb 100000 asks for more pinned memory"),
        (["--speculative-algorithm", "EAGLE"], "--speculative-algorithm EAGLE: a2ats does not support speculative decoding"),
        (["--kv-cache-dtype", "fp8_e4m3"], "--kv-cache-dtype fp8_e4m3: a2ats keeps the KV cache in 16 bits"),
        (["--a2ats-offload", "--page-size", "16"], "--a2ats-offload needs --page-size 1"),
    ],
)
def test_refused_in_seconds_with_nothing_written(tmp_path: Path, argv: list[str], message: str) -> None:
    """No GPU is visible (as in CI); the default model is never materialized, no codebook is
    resolved or calibrated, and the cache stays untouched."""
    import time

    cache = tmp_path / "cache"
    started = time.monotonic()
    out = run_cli(*argv, env={"A2ATS_SGLANG_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": ""})
    seconds = time.monotonic() - started
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("python -m a2ats_sglang.launch_server: error: ") and message in lines[-1]
    assert "Traceback" not in out.stderr and "calibrat" not in out.stderr.replace("calibrating or serving", "")
    assert not cache.exists()
    assert seconds < 10, f"took {seconds:.1f} s"


def test_settings_read_back_from_sglang_are_checked_too() -> None:
    """After SGLang parsed (an abbreviated ``--tp 2`` is seen only there) the same checks run on
    its resolved fields."""
    from types import SimpleNamespace

    ok = SimpleNamespace(tp_size=1, pp_size=1, dp_size=1, dcp_size=1, nnodes=1, enable_dp_attention=False,
                         speculative_algorithm=None, kv_cache_dtype="bfloat16", dtype="bfloat16")
    check_settings(ok, A2ATSConfig())
    for field, value, message in [
        ("tp_size", 2, "--tp-size 2"), ("pp_size", 2, "--pp-size 2"), ("nnodes", 2, "--nnodes 2"),
        ("enable_dp_attention", True, "--enable-dp-attention"), ("dtype", "float32", "--dtype float32"),
        ("kv_cache_dtype", "fp8_e5m2", "--kv-cache-dtype fp8_e5m2"),
    ]:
        with pytest.raises(Unsupported, match=message):
            check_settings(SimpleNamespace(**{**vars(ok), field: value}), A2ATSConfig())


def test_sglang_view_reads_aliases_and_defaults() -> None:
    ns = sglang_view(["--model", "/m", "--tensor-parallel-size", "2", "--data-parallel-size=3", "--port", "1"])
    assert (ns.model_path, ns.tp_size, ns.dp_size, ns.pp_size, ns.kv_cache_dtype) == ("/m", 2, 3, 1, "auto")


def test_device_other_than_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "cuda_device_count", lambda: 1)
    preflight.check_gpu(None)
    preflight.check_gpu("cuda")
    with pytest.raises(Unsupported, match="--device cpu: a2ats serves on an NVIDIA GPU"):
        preflight.check_gpu("cpu")


# -- a stopped calibration -------------------------------------------------------------------


STOPPABLE = """
import sys, time
from pathlib import Path
from a2ats_sglang.runtime import codebook_cache

def calibrate(model_path, out):
    (out / "codebook.safetensors").write_bytes(b"half")
    print("CALIBRATING", flush=True)
    time.sleep(120)

codebook_cache._calibrate = calibrate
codebook_cache.resolve_codebook(sys.argv[1], None, None)
"""


def test_sigterm_during_calibration_leaves_no_temporary_folder(tmp_path: Path) -> None:
    import signal

    model = model_dir(tmp_path, "smollm2-135m")
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE, str(model)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "A2ATS_SGLANG_CACHE": str(cache)},
    )
    try:
        assert proc.stdout.readline().strip() == "CALIBRATING"
        books = cache / "codebooks"
        assert [p.name for p in books.glob(".*.tmp-*")], "the calibration writes into a temporary folder"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert sorted(p.name for p in books.iterdir()) == [p.name for p in books.glob("*.lock")]


def test_a_killed_calibrations_folder_is_swept_by_the_next(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(model_dir(tmp_path, "smollm2-135m"))
    target = codebook_cache.cached_codebook_dir(model, codebook_cache.model_identity(codebook_cache.model_config(model), model))
    stale = target.with_name(f".{target.name}.tmp-abc123")
    stale.mkdir(parents=True)
    (stale / "codebook.safetensors").write_bytes(b"half")
    other = target.with_name(f".{target.name}-random.tmp-xyz")  # another lock's writer: not ours to sweep
    other.mkdir()
    monkeypatch.setattr(codebook_cache, "_calibrate", lambda m, out: make_codebook().save(out))
    assert resolve_codebook(model, None, None) == str(target)
    assert not stale.exists() and other.exists()
