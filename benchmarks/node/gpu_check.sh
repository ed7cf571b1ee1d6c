# First thing on a fresh H100 node: install, the GPU tests, and the decode-step split.
# Run from the repository root after copying the wheelhouse parts to /tmp/wh:
#   A2ATS_COMMIT=<sha> bash benchmarks/node/gpu_check.sh
bash /tmp/wh/install.sh /tmp/wh >/dev/null 2>&1
source benchmarks/node/env.sh
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || { echo PIP FAILED; tail /tmp/pip.log; }
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 300 python3 -m pytest -q tests/test_kernels.py tests/test_rotary.py tests/test_gpu_sparse_decode.py tests/test_gpu_method.py 2>&1 | tail -15
timeout 200 python3 -m benchmarks.decode_step --batch 1 8 16 --out $OUT/decode-step.json 2>&1 | grep -v Warn | tail -5
