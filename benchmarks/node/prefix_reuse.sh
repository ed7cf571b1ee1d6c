# Prefix reuse (issue 7), Llama-3.1-8B shape (dummy weights): one 32K-token document, 32 questions
# of 128 tokens sent at once, 128 output tokens; TTFT and total time for stock SGLang (its radix
# cache, KV in HBM), a2ats --a2ats-offload with the radix cache, and a2ats --a2ats-offload
# --disable-radix-cache. The sides run one after the other within one 10-minute call (stock and
# a2ats fit in one; a2ats-noradix, which prefills 32 documents, in another), on the same warm node:
#   A2ATS_COMMIT=<sha> SIDES="stock a2ats" bash benchmarks/node/prefix_reuse.sh
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
M=/tmp/models/llama-3.1-8b-shape
common="--load-format dummy --context-length 65800 --cuda-graph-backend-prefill disabled --cuda-graph-max-bs 32 --enable-metrics"
host_gb=$(awk '/MemAvailable/ {g = $2 / 1048576; h = g - 40; if (h > 0.8 * g) h = 0.8 * g; print int(h)}' /proc/meminfo)
for side in ${SIDES:?stock, a2ats and/or a2ats-noradix}; do
  case $side in
    stock) server=stock; extra="--attention-backend flashinfer" ;;
    a2ats) server=a2ats; extra="--a2ats-offload --a2ats-host-kv-gb $host_gb --max-running-requests 32" ;;
    a2ats-noradix) server=a2ats; extra="--a2ats-offload --a2ats-host-kv-gb $host_gb --max-running-requests 32 --disable-radix-cache" ;;
    *) echo "unknown side $side"; continue ;;
  esac
  timeout $((580 - SECONDS)) python3 -m benchmarks.throughput --server $server --label prefix-$side-llama8b --model-path $M \
    --input-lens 32768 --output-len 128 --shared-prefix 32 --question-len 128 --server-args "$common $extra" \
    --out $OUT/prefix-$side-llama8b.json --log-dir $OUT/logs 2>&1 | grep -v Warn | tail -3
  python3 - <<PY
import json; r = json.load(open("$OUT/prefix-$side-llama8b.json"))["runs"][0]
print("$side", {k: r.get(k) for k in ("duration", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "output_throughput",
                                      "prefill_computed_tokens", "prefill_cached_tokens", "error")})
PY
  grep -h "A²ATS\|Traceback\|Error" $OUT/logs/server-prefix-$side-llama8b.log 2>/dev/null | cut -c1-300 | tail -6
  echo "$side done at $SECONDS s"
done
