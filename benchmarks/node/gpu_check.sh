# First thing on a fresh GPU node: install, the GPU tests, the decode-step split and the
# offload fetch timing (the full-budget equality is benchmarks/node/equality.sh, ~6 min alone;
# the offload server tests, tests/test_gpu_offload_{server,prefix}.py, start their own
# servers, ~5 min each).
# Run from the repository root after copying the wheelhouse parts to /tmp/wh:
#   A2ATS_COMMIT=<sha> bash benchmarks/node/gpu_check.sh
bash /tmp/wh/install.sh /tmp/wh >/dev/null 2>&1
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 240 python3 -m pytest -q -rf --tb=short tests/test_host_pool.py tests/test_lut.py tests/test_kernels.py tests/test_rotary.py tests/test_gpu_sparse_decode.py tests/test_gpu_method.py \
  tests/test_deferred_encode.py tests/test_hot_buffer.py tests/test_offload_pool.py tests/test_offload_select.py \
  tests/test_offload_lifecycle.py tests/test_staging_admission.py 2>&1 | tail -15
echo "tests done at $SECONDS s"
timeout 150 python3 -m benchmarks.decode_step --batch 1 8 16 --out $OUT/decode-step.json 2>&1 | grep -v Warn | tail -4
echo "decode step done at $SECONDS s"
timeout $((590 - SECONDS)) python3 -m benchmarks.fetch_step --batch 1 8 16 --out $OUT/fetch-step.json 2>&1 | grep -v Warn | tail -13
# the Llama-8B run's hot buffers (64K requests, 14K-token buffers): the scan over large buffers
timeout $((590 - SECONDS)) python3 -m benchmarks.fetch_step --context 65536 --width 2046 --hot-tokens 14208 --batch 10 --miss 0 0.25 0.75 --out $OUT/fetch-step-64k.json 2>&1 | grep -v Warn | tail -4
