# The GPU-node run behind accuracy-{stock-same-run,a2ats-full,a2ats-r02,r03,r05}-smollm2.json: one stock and
# four a2ats servers (full budget; 2, 3, 5 % with no minimum) share the GPU, each at a fixed KV pool.
# Needs the wheelhouse (../shared/gpu/wheelhouse.sh) unpacked in /tmp/wh; run from the repository root:
#   A2ATS_COMMIT=<sha> bash benchmarks/node/accuracy_budgets.sh
bash /tmp/wh/install.sh /tmp/wh >/dev/null 2>&1
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
echo "installed at $SECONDS s"
nohup python3 -m sglang.launch_server --model-path $A2ATS_SGLANG_SMOLLM2 --port 30000 --attention-backend flashinfer --cuda-graph-backend-prefill disabled --mem-fraction-static 0.5 --max-total-tokens 240000 --cuda-graph-max-bs 32 > /tmp/stock.log 2>&1 &
echo $! > /tmp/stock.pid
start full 30001 --a2ats-budget-ratio 1.0 --a2ats-budget-max none
sleep 100  # the first launcher calibrates the codebook; the others find it cached
for r in 02 03 05; do start r$r 300$r --a2ats-budget-ratio 0.$r --a2ats-budget-min 0; done
bash benchmarks/node/wait.sh 30000 /tmp/stock.pid || clean /tmp/stock.log | grep -v Capturing | tail -5
bash benchmarks/node/wait.sh 30001 /tmp/full.pid || clean /tmp/full.log | grep -v Capturing | tail -20
for p in 30000 30001; do timeout $((560 - SECONDS)) python3 -m benchmarks.accuracy --base-url http://127.0.0.1:$p --label p$p --lengths 4096 7168 --samples 5 --out $OUT/acc-$p.json > /tmp/acc$p.log 2>&1 & clients="$clients $!"; done
for r in 02 03 05; do bash benchmarks/node/wait.sh 300$r /tmp/r$r.pid || clean /tmp/r$r.log | grep -v Capturing | tail -8; done
echo "servers up at $SECONDS s"
for r in 02 03 05; do timeout $((575 - SECONDS)) python3 -m benchmarks.accuracy --base-url http://127.0.0.1:300$r --label a2ats-r$r-min0 --lengths 4096 7168 --samples 25 --concurrency 32 --out $OUT/accuracy-a2ats-r$r-min0-smollm2.json > /tmp/acc$r.log 2>&1 & clients="$clients $!"; done
wait $clients; echo "done at $SECONDS s"  # not a bare wait: the servers are this shell's jobs too
python3 -m benchmarks.compare $OUT/acc-30000.json $OUT/acc-30001.json | tail -12
python3 -m benchmarks.compare benchmarks/results/accuracy-stock-smollm2.json $OUT/acc-30000.json | tail -3
for r in 02 03 05; do tail -1 /tmp/acc$r.log; done
