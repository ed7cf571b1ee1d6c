# Offload mode against the GPU-resident sparse backend at the same budget (SmolLM2, both with
# SGLang's deterministic inference, one request at a time so both see the same batches: the
# lookup-table GEMM is not batch-invariant): offload changes where K/V live, not which tokens are
# attended or in which order, so greedy outputs should match token for token. The offload server
# runs 256 request rows, so its hot buffers (~2.9K tokens) are smaller than the prompts and
# evict. Run from the
# repository root on the GPU node after the wheelhouse install:
#   A2ATS_COMMIT=<sha> bash benchmarks/node/offload_equality.sh
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
det="--enable-deterministic-inference --cuda-graph-max-bs 32 --disable-radix-cache"
nohup python3 -m a2ats_sglang.launch_server --port 30010 --mem-fraction-static 0.25 --max-total-tokens 240000 $det > /tmp/resident.log 2>&1 &
echo $! > /tmp/resident.pid
nohup python3 -m a2ats_sglang.launch_server --port 30011 --mem-fraction-static 0.25 --a2ats-offload --a2ats-host-kv-gb 8 --max-running-requests 256 --enable-metrics $det > /tmp/offload.log 2>&1 &
echo $! > /tmp/offload.pid
bash benchmarks/node/wait.sh 30010 /tmp/resident.pid || clean /tmp/resident.log | cut -c1-400 | tail -20
bash benchmarks/node/wait.sh 30011 /tmp/offload.pid || { clean /tmp/offload.log | cut -c1-400 | tail -30; cp /tmp/offload.log $OUT/; exit 1; }
clean /tmp/offload.log | grep -i "a2ats\|offload\|error" | cut -c1-300 | head -20
curl -s -m 60 localhost:30011/generate -H 'content-type: application/json' -d '{"text": "The capital of France is", "sampling_params": {"max_new_tokens": 16, "temperature": 0}}'; echo
for p in 30010 30011; do timeout 240 python3 -m benchmarks.accuracy --base-url http://127.0.0.1:$p --label offload-eq-$p --lengths 4096 7168 --samples 5 --concurrency ${CONCURRENCY:-1} --out $OUT/accuracy-offload-eq-$p.json > /tmp/acc$p.log 2>&1 & clients="$clients $!"; done
wait $clients  # not a bare wait: the servers are this shell's jobs too
tail -3 /tmp/acc30011.log
python3 -m benchmarks.compare $OUT/accuracy-offload-eq-30010.json $OUT/accuracy-offload-eq-30011.json | tail -12
curl -s -m 10 localhost:30011/metrics | grep -E "^a2ats|^sglang:token_usage|^sglang:num_used" | head -20
clean /tmp/offload.log | grep -iE "error|traceback|exception|a2ats" | cut -c1-300 | tail -20
cp /tmp/offload.log /tmp/resident.log $OUT/ 2>/dev/null
kill $(cat /tmp/resident.pid) $(cat /tmp/offload.pid) 2>/dev/null; sleep 3
