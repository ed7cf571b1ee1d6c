# The README as a new user meets it, on a GPU node: serve with no arguments (the embedded
# SmolLM2, a codebook calibrated on first start into a fresh cache), then run the README's
# "First request" code blocks exactly as written. Everything goes to $OUT/first-contact.log.
# Run from the repository root, after install (see benchmarks/README.md):
#   A2ATS_COMMIT=<sha> bash benchmarks/node/first_contact.sh
source benchmarks/node/env.sh
export A2ATS_SGLANG_CACHE=/tmp/first-contact-cache  # a fresh cache: the first start calibrates
rm -rf "$A2ATS_SGLANG_CACHE"
log=$OUT/first-contact.log
blocks=/tmp/first-contact; mkdir -p $blocks
# the fenced blocks under "### First request", in order: 1 = bash (curl), 2 = python (OpenAI client)
awk '/^### First request/{on=1} on&&/^## /{exit} on&&/^```/{if(inb){inb=0;n++}else{inb=1;next}} on&&inb{print > ("'$blocks'/block" n+0)}' README.md
t0=$SECONDS
setsid nohup python3 -m a2ats_sglang.launch_server > /tmp/first-contact-server.log 2>&1 &
echo $! > /tmp/first-contact.pid
for i in $(seq 1 290); do
  grep -q "The server is fired up and ready to roll" /tmp/first-contact-server.log && break
  kill -0 $(cat /tmp/first-contact.pid) 2>/dev/null || break
  sleep 2
done
{
  echo "== commit $A2ATS_COMMIT, $(nvidia-smi --query-gpu=name --format=csv,noheader)"
  echo "== server ready after $((SECONDS - t0)) s (python3 -m a2ats_sglang.launch_server, no arguments)"
  echo "== README block 1 (bash):"; cat $blocks/block0
  echo "== its output:"; bash $blocks/block0; echo; echo "exit $?"
  echo "== README block 2 (python):"; cat $blocks/block1
  echo "== its output:"; python3 $blocks/block1; echo "exit $?"
  echo "== server log (progress bars dropped):"; clean /tmp/first-contact-server.log | tail -60
} > $log 2>&1
kill -- -$(cat /tmp/first-contact.pid) 2>/dev/null
cat $log | head -40
