# The issue-5 evidence on a fresh H100 node in one call: install, start the deterministic
# stock/A²ATS servers (they warm up while the tests run), the GPU tests, the full-budget
# equality, then the decode-step split on an otherwise idle GPU.
# Run from the repository root after copying the wheelhouse parts to /tmp/wh:
#   A2ATS_COMMIT=<sha> bash benchmarks/node/gpu_check.sh
bash /tmp/wh/install.sh /tmp/wh >/dev/null 2>&1
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
nvidia-smi --query-gpu=name --format=csv,noheader
bash benchmarks/node/equality.sh start
timeout 240 python3 -m pytest -q tests/test_kernels.py tests/test_rotary.py tests/test_gpu_sparse_decode.py tests/test_gpu_method.py tests/test_deferred_encode.py 2>&1 | tail -15
echo "tests done at $SECONDS s"
bash benchmarks/node/equality.sh compare
echo "equality done at $SECONDS s"
timeout 150 python3 -m benchmarks.decode_step --batch 1 8 16 --out $OUT/decode-step.json 2>&1 | grep -v Warn | tail -5
echo "decode step done at $SECONDS s"
timeout $((585 - SECONDS)) python3 -m benchmarks.decode_step --batch 1 8 --graph-context 131072 --out $OUT/decode-step-graph128k.json 2>&1 | grep -v Warn | tail -3
timeout $((595 - SECONDS)) python3 -m benchmarks.fetch_step --batch 1 8 16 --out $OUT/fetch-step.json 2>&1 | grep -v Warn | tail -13
