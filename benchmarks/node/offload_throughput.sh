# Serving throughput, Llama-3.1-8B shape (dummy weights), random 32K- and 64K-token prompts, 256 output
# tokens: stock SGLang (FlashInfer, KV on the GPU) vs a2ats --a2ats-offload, each at the largest
# concurrency its KV capacity holds, one after the other on this GPU. Run from the repository
# root on the GPU node after the wheelhouse install:
#   A2ATS_COMMIT=<sha> [LENS="32768 65536"] bash benchmarks/node/offload_throughput.sh [WAVES]
# Needs a whole 10-minute call per side at both lengths; run one side per call if short.
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
M=/tmp/models/llama-3.1-8b-shape
# context: the longest prompt + 256 output tokens + a margin (SGLang caps a request at context - 1);
# decode graphs up to 32 requests (both sides run fewer at these lengths; capture took 2 min of a
# cold a2ats start at the default sizes)
common="--load-format dummy --context-length 65800 --cuda-graph-backend-prefill disabled --cuda-graph-max-bs 32 --enable-metrics"
# host pool: free RAM less 40 GiB (stock SGLang's own processes peaked at 31 GiB RSS here)
host_gb=$(awk '/MemAvailable/ {g = $2 / 1048576; h = g - 40; if (h > 0.8 * g) h = 0.8 * g; print int(h)}' /proc/meminfo)
echo "host KV pool: $host_gb GiB"
for side in ${SIDES:-stock a2ats}; do
  extra="--attention-backend flashinfer"
  [ $side = a2ats ] && extra="--a2ats-offload --a2ats-host-kv-gb $host_gb"
  timeout $((580 - SECONDS)) python3 -m benchmarks.throughput --server $side --label $side-offload-llama8b --model-path $M \
    --input-lens ${LENS:-32768 65536} --output-len 256 --waves ${1:-1} --server-args "$common $extra" \
    --out $OUT/throughput-$side-offload-llama8b.json --log-dir $OUT/logs 2>&1 | grep -v Warn | tail -3
  echo "$side done at $SECONDS s"
done
grep -h "A²ATS" $OUT/logs/server-a2ats*.log | cut -c1-300 | tail -12
