# Shared settings for the GPU-node scripts: paths of the node image, and start NAME PORT ARGS to
# run an a2ats server in the background (log /tmp/NAME.log, pid /tmp/NAME.pid).
export PYTHONPATH=/tmp/site A2ATS_SGLANG_SMOLLM2=/tmp/models/SmolLM2-135M-Instruct A2ATS_SGLANG_CACHE=/tmp/a2c PYTHONUNBUFFERED=1
# A2ATS_COMMIT: the sha of the checkout that sent the tree, written into the command literally
# (git rev-parse on the node reads a stale .git: results of 2026-11-27 were stamped 3188cbd so)
export A2ATS_COMMIT=${A2ATS_COMMIT:?set A2ATS_COMMIT to the commit being measured}
clean() { tr '\r' '\n' < $1 | grep -v "it/s\]\|pair/s\]\|tok/s\]"; }
start() { # start NAME PORT ARGS...: a2ats server in the background
  local name=$1 port=$2; shift 2
  nohup python3 -m a2ats_sglang.launch_server --port $port --mem-fraction-static 0.5 --max-total-tokens 240000 --cuda-graph-max-bs 32 "$@" > /tmp/$name.log 2>&1 &
  echo $! > /tmp/$name.pid
}
