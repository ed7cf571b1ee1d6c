# The GPU server tests of offload mode, the modules at once (each starts its own SmolLM2 server,
# ~2 min cold): tests/test_gpu_offload_prefix.py (prefix reuse, issue 7),
# tests/test_gpu_offload_server.py (host pool exhaustion, waiting, aborts; issue 6) and
# tests/test_gpu_offload_shared.py (the prefix tests with --a2ats-offload-cache shared) and
# tests/test_gpu_offload_tiered.py (those with --a2ats-gpu-homes, and equality with the resident
# backend; MODULES=tiered, not in the default set until it has run once). The second
# server starts once the first has sized its pools, as SGLang sizes from the free memory it sees.
# Reports in $OUT/tests-offload-{prefix,server,shared,tiered}.log, server logs in $OUT/server-offload-*.log.
# ~5 min; run from the repository root on the GPU node after the wheelhouse install (MODULES=prefix
# runs one of them):
#   A2ATS_COMMIT=<sha> [MODULES="prefix shared"] bash benchmarks/node/offload_server_tests.sh
source benchmarks/node/env.sh
export OUT
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
run() { timeout 540 python3 -m pytest -q -rf --tb=short -p no:cacheprovider tests/test_gpu_offload_$1.py > $OUT/tests-offload-$1.log 2>&1; }
modules=${MODULES:-prefix server shared}
first=
for m in $modules; do
  if [ -n "$first" ]; then  # the next server sizes its pools once the previous one has
    for i in $(seq 1 120); do
      grep -q "Memory pool end" $OUT/server-offload-*.log 2>/dev/null && break
      kill -0 $first 2>/dev/null || break
      sleep 2
    done
  fi
  run $m & first=${first:-$!}
done
wait
for m in $modules; do echo "== $m"; grep -E "^(FAILED|ERROR)|passed|failed" $OUT/tests-offload-$m.log | tail -8; done
grep -h "Traceback" -A30 $OUT/server-offload-*.log 2>/dev/null | grep -E "Error|error" | head -5
