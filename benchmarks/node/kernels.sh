# Issue "decode kernels near their byte roofline", on the GPU node after install (suite.sh or
# gpu_check.sh installed the wheelhouse and the package); one call each:
#   A2ATS_COMMIT=<sha> bash benchmarks/node/kernels.sh step       # kernel GPU tests + decode_step at 32K
#   A2ATS_COMMIT=<sha> bash benchmarks/node/kernels.sh step-random  # decode_step at 32K, slots at random (the old layout)
#   A2ATS_COMMIT=<sha> bash benchmarks/node/kernels.sh step128k   # decode_step with graphs sized for 128K
#   A2ATS_COMMIT=<sha> bash benchmarks/node/kernels.sh one-batch  # bench_one_batch stock vs a2ats, ~6 min
#   A2ATS_COMMIT=<sha> bash benchmarks/node/kernels.sh tune       # kernel grid knobs swept at 32K, bs 1/8/32 (KNOBS="A B": only those)
#   A2ATS_COMMIT=<sha> bash benchmarks/node/kernels.sh tune128k   # the same with graphs sized for 128K, bs 1/8
#   A2ATS_COMMIT=<sha> bash benchmarks/node/kernels.sh probe      # the score kernel alone: slot/code layouts, grids
# Writes $OUT/decode-step-h200{,-random,-graph128k}.json, $OUT/kernel-tuning-h200.json, $OUT/score-probe-h200.json
# $OUT/kernel-tuning-h200-graph128k.json and $OUT/one-batch-h200.json.
source benchmarks/node/env.sh
case "${1:-step}" in
  step)
    timeout 240 python3 -m pytest -q -rf --tb=long tests/test_lut.py tests/test_kernels.py tests/test_rotary.py tests/test_deferred_encode.py \
      tests/test_gpu_sparse_decode.py tests/test_shared_cache.py tests/test_hot_buffer.py tests/test_offload_select.py \
      2>&1 | tee $OUT/kernel-tests.log | tail -8
    echo "tests done at $SECONDS s"
    timeout $((590 - SECONDS)) python3 -m benchmarks.decode_step --batch 1 8 16 32 --profile --out $OUT/decode-step-h200.json 2>&1 | grep -v Warn | tail -5
    echo "32K done at $SECONDS s" ;;
  step-random)
    timeout 580 python3 -m benchmarks.decode_step --batch 1 8 16 32 --profile --slots random \
      --out $OUT/decode-step-h200-random.json 2>&1 | grep -v Warn | tail -5 ;;
  step128k)
    timeout 580 python3 -m benchmarks.decode_step --context 131072 --graph-context 131072 --batch 1 4 8 --profile \
      --out $OUT/decode-step-h200-graph128k.json 2>&1 | grep -v Warn | tail -4 ;;
  probe)
    timeout 580 python3 -m benchmarks.score_probe --batch 8 32 --out $OUT/score-probe-h200.json 2>&1 \
      | grep -v Warn | tee $OUT/score-probe.log | tail -60 ;;
  tune)
    timeout 580 python3 -m benchmarks.kernel_tuning --batch 1 8 32 ${KNOBS:+--knobs $KNOBS} --out $OUT/kernel-tuning-h200.json 2>&1 \
      | grep -v Warn | tail -4 ;;
  tune128k)  # the knobs with graphs sized for 128K, batch 1/8 (KNOBS="MANY_ROWS_SPLITS": the split cap tuned at 32K)
    timeout 580 python3 -m benchmarks.kernel_tuning --context 131072 --graph-context 131072 --batch 1 8 \
      ${KNOBS:+--knobs $KNOBS} --out $OUT/kernel-tuning-h200-graph128k.json 2>&1 | grep -v Warn | tail -4 ;;
  one-batch)
    timeout 580 python3 -m benchmarks.one_batch --model-path /tmp/models/llama-3.1-8b-shape --batch-size 16 --input-len 32768 \
      --out $OUT/one-batch-h200.json 2>&1 | grep "one_batch\]" ;;
esac
