# The workload suite across several 10-minute calls of one lease: `start` launches
# `python -m benchmarks.suite` in its own session (it outlives the call) and returns; `poll`
# waits up to WAIT seconds (default 540), prints its progress and copies the result files and the
# server logs (suite-logs.tgz) into $OUT. Pass the suite's flags after `start`, e.g.
#   A2ATS_COMMIT=<sha> bash benchmarks/node/suite.sh start --workloads decode-heavy --sides stock a2ats
#   A2ATS_COMMIT=<sha> bash benchmarks/node/suite.sh poll
# Results go to /tmp/suite-results, seeded with the committed suite files (so it resumes), since
# each call re-copies the checkout; server logs to /tmp/suite-logs.
source benchmarks/node/env.sh
case "${1:-poll}" in
  start)
    shift
    mkdir -p /tmp/suite-logs /tmp/suite-results
    cp -n benchmarks/results/suite-*.json /tmp/suite-results/ 2>/dev/null
    setsid nohup python3 -m benchmarks.suite --results /tmp/suite-results "$@" > /tmp/suite-logs/suite.log 2>&1 &
    echo $! > /tmp/suite.pid
    sleep 5; cat /tmp/suite-logs/suite.log ;;
  poll)
    for i in $(seq 1 $(( ${WAIT:-540} / 10 ))); do kill -0 $(cat /tmp/suite.pid) 2>/dev/null || break; sleep 10; done
    grep "^\[suite\]" /tmp/suite-logs/suite.log | tail -25
    kill -0 $(cat /tmp/suite.pid) 2>/dev/null && echo "suite still running" || echo "suite finished"
    cp /tmp/suite-results/suite-*.json $OUT/ 2>/dev/null
    tar czf $OUT/suite-logs.tgz -C /tmp suite-logs 2>/dev/null  # server logs: prefill batches, decode rates
    ls $OUT ;;
esac
