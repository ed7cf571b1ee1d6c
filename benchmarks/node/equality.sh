# Full-budget A²ATS against stock FlashInfer with SGLang's deterministic inference on both sides
# (tensor-core decode, fixed split size, batch-invariant kernels): greedy outputs should match
# token for token. a2ats's deterministic extends run SGLang's Triton unified kernel (its Triton
# backend's deterministic prefill: a row's result does not depend on how its prompt was split);
# STOCK_BACKEND=triton gives the stock side that prefill kernel too (default flashinfer). Run from
# the repository root on the GPU node after the wheelhouse install:
#   A2ATS_COMMIT=<sha> [STOCK_BACKEND=triton] bash benchmarks/node/equality.sh [start|compare]
# "start" launches both servers in the background and returns (other GPU work can run while
# they warm up), "compare" waits for them, runs the tasks on both and compares; default: both.
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
# no radix cache on either side: SGLang turns it off for FlashInfer in deterministic mode, while
# a2ats keeps it, and a prefix hit is a different extend from the stock side's cold prefill
det="--enable-deterministic-inference --disable-radix-cache --mem-fraction-static 0.25 --max-total-tokens 240000 --cuda-graph-max-bs 32"
if [ "${1:-all}" != compare ]; then
  nohup python3 -m sglang.launch_server --model-path $A2ATS_SGLANG_SMOLLM2 --port 30000 --attention-backend ${STOCK_BACKEND:-flashinfer} --cuda-graph-backend-prefill disabled $det > /tmp/stock.log 2>&1 &
  echo $! > /tmp/stock.pid
  nohup python3 -m a2ats_sglang.launch_server --port 30001 --a2ats-budget-ratio 1.0 --a2ats-budget-max none $det > /tmp/full.log 2>&1 &
  echo $! > /tmp/full.pid
fi
if [ "${1:-all}" != start ]; then
  bash benchmarks/node/wait.sh 30000 /tmp/stock.pid || clean /tmp/stock.log | tail -20
  bash benchmarks/node/wait.sh 30001 /tmp/full.pid || clean /tmp/full.log | tail -20
  for p in 30000 30001; do timeout 200 python3 -m benchmarks.accuracy --base-url http://127.0.0.1:$p --label det-$p --lengths 4096 7168 --samples 5 --out $OUT/accuracy-det-$p.json > /tmp/acc$p.log 2>&1 & clients="$clients $!"; done
  wait $clients  # not a bare wait: the servers are this shell's jobs too
  python3 -m benchmarks.compare $OUT/accuracy-det-30000.json $OUT/accuracy-det-30001.json | tail -20
  kill $(cat /tmp/stock.pid) $(cat /tmp/full.pid) 2>/dev/null; sleep 3
fi
