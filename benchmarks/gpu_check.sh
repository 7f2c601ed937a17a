#!/usr/bin/env bash
# Every GPU check in one run, for a machine with a CUDA GPU on which nothing of bqq is installed and there is
# no network (the tree runs as copied: bqq imports kernels/ as bqq_kernels by itself). Whenever a GPU is at
# hand, run this first and commit what it writes.
#
#   bash benchmarks/gpu_check.sh [OUT]      # OUT: where results go (default: $OUT, else benchmarks/results/gpu)
#
# Steps, each under its own time limit (9 minutes in all at most): the CUDA tests (every test file with CUDA
# parametrizations), then the GPU benchmarks: kernels (BQQ paths, bit-plane kernels, DeiT-S), the GPU solver,
# DeiT-S quantized on the GPU, and the LLM scale check's block pass with its blocks run on the GPU (one block of
# TinyLlama's shapes; GPTQ's solve itself runs on the CPU). Writes 7 files (the device tool takes 8):
# kernels_cuda.md/.json, solver_cuda.json, ptq_timing's json, llm_scale_tinyllama_gptq-calibrated.md/.json, and gpu_check.log
# with every step's output.
# Exit status: 0 when every step passed.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
unset TRITON_INTERPRET
python=${PYTHON:-python3}
failed=0

step() {  # step NAME SECONDS COMMAND...: run, append its output to the log, report its status and time
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "== $name: $*" | tee -a "$log"
    timeout "$limit" "$@" >> "$log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(( $(date +%s) - start )) s (limit $limit s)" | tee -a "$log"
    [ "$rc" -eq 0 ] || failed=1
}

step environment 60 "$python" -c "import torch, triton, bqq, bqq_kernels; \
assert torch.cuda.is_available(), 'no CUDA device is visible'; \
print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0), bqq_kernels.__file__)"
[ "$failed" -eq 0 ] || { echo "gpu_check: no usable CUDA setup (see $log)"; exit 1; }
step cuda_tests 150 "$python" -m pytest -q -p no:cacheprovider tests/kernels/gpu \
    tests/kernels/test_ops.py tests/solver/test_torch_backend.py tests/solver/test_devices.py
step kernels 150 "$python" -m benchmarks.kernels --device cuda --out "$out"
step solver 60 "$python" benchmarks/solver.py --device cuda --skip-llm --json "$out/solver_cuda.json"
step ptq_timing 60 "$python" -m benchmarks.ptq_timing --device cuda --out "$out"
step llm_scale 60 "$python" -m benchmarks.llm_scale --shape tinyllama --model-blocks 1 --blocks 1 --nsamples 4 \
    --seqlen 128 --device cuda --out "$out"
if [ "$failed" -eq 0 ]; then summary="every step passed"; else summary="some steps failed (see $log)"; fi
echo "gpu_check: $summary" | tee -a "$log"
exit "$failed"
