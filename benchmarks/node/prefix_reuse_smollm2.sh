# Prefix reuse on SmolLM2 with the accuracy harness's multi-question task (issue 7): niah_multiquery
# asks four questions about each 7K-token document, one request at a time, so with a radix cache
# three of four prompts find their document cached. a2ats offload with the radix cache vs a2ats
# offload --disable-radix-cache (both deterministic: answers must be equal token for token), and
# stock SGLang with its radix cache (not deterministic: SGLang turns the radix cache off for
# FlashInfer in deterministic mode); per-request seconds in each result. ~6 min on a warm node:
#   A2ATS_COMMIT=<sha> bash benchmarks/node/prefix_reuse_smollm2.sh
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
acc="--tasks niah_multiquery --lengths 7168 --samples 16 --concurrency 1"
det="--enable-deterministic-inference --cuda-graph-max-bs 32"
for side in reuse noradix stock; do
  case $side in
    reuse) start reuse 30020 --a2ats-offload --a2ats-host-kv-gb 8 $det ;;
    noradix) start noradix 30020 --a2ats-offload --a2ats-host-kv-gb 8 --disable-radix-cache $det ;;
    stock) nohup python3 -m sglang.launch_server --model-path $A2ATS_SGLANG_SMOLLM2 --port 30020 --mem-fraction-static 0.5 \
             --attention-backend flashinfer --cuda-graph-max-bs 32 > /tmp/stock.log 2>&1 & echo $! > /tmp/stock.pid ;;
  esac
  bash benchmarks/node/wait.sh 30020 /tmp/$side.pid || { clean /tmp/$side.log | cut -c1-300 | tail -20; continue; }
  timeout $((560 - SECONDS)) python3 -m benchmarks.accuracy --base-url http://127.0.0.1:30020 --label prefix-$side-smollm2 \
    $acc --out $OUT/accuracy-prefix-$side-smollm2.json > /tmp/acc-$side.log 2>&1
  grep "#cached-token" /tmp/$side.log | sed 's/.*#new-token: \([0-9]*\), #cached-token: \([0-9]*\).*/\1 \2/' \
    | awk -v s=$side '{n += $1; c += $2} END {print s, "computed", n, "cached", c}'
  python3 -c "import json; r = json.load(open('$OUT/accuracy-prefix-$side-smollm2.json'))['results']['niah_multiquery']['7168']; print('$side', r)"
  cp /tmp/$side.log $OUT/server-prefix-$side.log
  kill $(cat /tmp/$side.pid) 2>/dev/null; sleep 5
done
python3 -m benchmarks.compare $OUT/accuracy-prefix-noradix-smollm2.json $OUT/accuracy-prefix-reuse-smollm2.json | tail -6
