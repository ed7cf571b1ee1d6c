# Prefix reuse on SmolLM2 with the accuracy harness's multi-question task (issue 7): niah_multiquery
# asks four questions about each 7K-token document, one request at a time, so with a radix cache
# three of four prompts find their document cached. a2ats offload with the radix cache vs a2ats
# offload --disable-radix-cache (both deterministic: answers must be equal token for token), and
# stock SGLang with its radix cache (not deterministic: SGLang turns the radix cache off for
# FlashInfer in deterministic mode); per-request seconds, TTFT and cached prompt tokens (the server's
# meta_info, warm-up requests excluded) in each result.
# The three servers start together (each after the previous one has sized its pools, as SGLang
# sizes from the free memory it sees); $DURING, if set, runs while they start (e.g. the GPU server
# tests, on their own ports); the three clients then run one after the other on a quiet GPU.
# ~4 min on a warm node, plus $DURING (the offload server tests: ~5 min):
#   A2ATS_COMMIT=<sha> [SIDES="reuse noradix"] [DURING="bash benchmarks/node/offload_server_tests.sh"] \
#     bash benchmarks/node/prefix_reuse_smollm2.sh
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
det=${DET-"--enable-deterministic-inference --cuda-graph-max-bs 32"}  # DET="--cuda-graph-max-bs 32": FlashInfer extends
sides=${SIDES:-reuse noradix stock}
port() { case $1 in reuse) echo 30020 ;; noradix) echo 30021 ;; stock) echo 30022 ;; esac; }
sized() { # wait until a server has allocated its KV pool (or died)
  for i in $(seq 1 90); do
    grep -q "Memory pool end" /tmp/$1.log 2>/dev/null && return 0
    kill -0 $(cat /tmp/$1.pid) 2>/dev/null || return 1
    sleep 2
  done
}
for side in $sides; do
  case $side in
    reuse) start reuse $(port reuse) --mem-fraction-static 0.15 --a2ats-offload --a2ats-host-kv-gb 8 $det ;;
    noradix) start noradix $(port noradix) --mem-fraction-static 0.15 --a2ats-offload --a2ats-host-kv-gb 8 --disable-radix-cache $det ;;
    stock) nohup python3 -m sglang.launch_server --model-path $A2ATS_SGLANG_SMOLLM2 --port $(port stock) --mem-fraction-static 0.15 \
             --attention-backend flashinfer --cuda-graph-max-bs 32 > /tmp/stock.log 2>&1 & echo $! > /tmp/stock.pid ;;
  esac
  sized $side || echo "$side did not size its pools"
done
[ -n "$DURING" ] && { eval "$DURING"; echo "DURING done at $SECONDS s"; }
acc="--tasks niah_multiquery --lengths 7168 --samples 16 --concurrency 1"
for side in $sides; do
  p=$(port $side)
  bash benchmarks/node/wait.sh $p /tmp/$side.pid || { clean /tmp/$side.log | cut -c1-300 | tail -20; continue; }
  timeout $((590 - SECONDS)) python3 -m benchmarks.accuracy --base-url http://127.0.0.1:$p --label prefix-$side-smollm2 \
    $acc --out $OUT/accuracy-prefix-$side-smollm2.json > /tmp/acc-$side.log 2>&1
  python3 -c "import json; r = json.load(open('$OUT/accuracy-prefix-$side-smollm2.json'))['results']['niah_multiquery']['7168']; print('$side', r)"
  cp /tmp/$side.log $OUT/server-prefix-$side.log
  kill $(cat /tmp/$side.pid) 2>/dev/null
done
[ -f $OUT/accuracy-prefix-noradix-smollm2.json ] && [ -f $OUT/accuracy-prefix-reuse-smollm2.json ] && \
  python3 -m benchmarks.compare $OUT/accuracy-prefix-noradix-smollm2.json $OUT/accuracy-prefix-reuse-smollm2.json | tail -6
