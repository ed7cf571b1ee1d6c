# The reliability soak on the GPU node (after install, as in suite.sh): an a2ats server on the
# Llama-3.1-8B shape (dummy weights, 128K context: prompts up to 60K), then ~10 min of load.
#   A2ATS_COMMIT=<sha> bash benchmarks/node/soak.sh [resident|offload]   # ~14 min: run it as two calls
#   A2ATS_COMMIT=<sha> WAIT=560 bash benchmarks/node/soak.sh poll
# Writes $OUT/reliability-h200-<side>.json and the server log.
source benchmarks/node/env.sh
M=/tmp/models/llama-3.1-8b-shape
case "${1:-resident}" in
  resident|offload)
    flags="--load-format dummy --enable-metrics --cuda-graph-max-bs 32 --cuda-graph-backend-prefill disabled"
    [ "$1" = offload ] && flags="$flags --a2ats-offload --a2ats-host-kv-gb 60"
    setsid nohup python3 -m a2ats_sglang.launch_server --model-path $M --port 30000 $flags > /tmp/soak-server.log 2>&1 &
    echo $! > /tmp/soak-server.pid
    for i in $(seq 1 60); do curl -sf localhost:30000/health >/dev/null && break; sleep 5; done
    setsid nohup python3 -m benchmarks.soak --base-url http://127.0.0.1:30000 --duration 600 \
      --out /tmp/reliability-h200-$1.json > /tmp/soak.log 2>&1 &
    echo $! > /tmp/soak.pid; echo $1 > /tmp/soak.side; sleep 5; tail -3 /tmp/soak.log ;;
  poll)
    for i in $(seq 1 $(( ${WAIT:-540} / 10 ))); do kill -0 $(cat /tmp/soak.pid) 2>/dev/null || break; sleep 10; done
    tail -5 /tmp/soak.log
    cp /tmp/reliability-h200-*.json $OUT/ 2>/dev/null
    kill -0 $(cat /tmp/soak.pid) 2>/dev/null || { kill $(cat /tmp/soak-server.pid); clean /tmp/soak-server.log | tail -c 300000 > $OUT/server-soak-$(cat /tmp/soak.side).log; } ;;
esac
