# FlashInfer's and Triton's JIT caches across nodes: a fresh node spends ~190 s compiling
# FlashInfer's kernels for the Llama-3.1-8B shape before stock SGLang answers (H200, 2026-12-02:
# 94 s in the first decode-graph capture, 91 s in the first prefill).
#   bash benchmarks/node/jit_cache.sh save   # end of a lease: the caches into $OUT/jit-cache.tgz
#   bash benchmarks/node/jit_cache.sh load   # fresh node: unpack .gpu/jit/jit-cache.tgz (carried)
# Keep it here under .gpu/jit/ (ignored) and pass carry=[".gpu/jit"] to the call that loads it.
case "${1:-load}" in
  save)
    tar czf $OUT/jit-cache.tgz -C ~ $(cd ~ && ls -d .cache/flashinfer .triton/cache 2>/dev/null)
    ls -la $OUT/jit-cache.tgz ;;
  load)
    if [ -f .gpu/jit/jit-cache.tgz ]; then tar xzf .gpu/jit/jit-cache.tgz -C ~ && echo "JIT caches loaded"; else echo "no .gpu/jit/jit-cache.tgz"; fi ;;
esac
