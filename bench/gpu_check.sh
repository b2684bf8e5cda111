#!/usr/bin/env bash
# bench/gpu_check.sh OUT [--deadline SECONDS] [--only STAGE[,STAGE]]
#
# Every GPU check of this project in one command, for the few lent minutes of a GPU machine:
# the environment probe, nn.selfcheck on CuPy, the tests marked gpu, a short ResNet-50 training
# run (resumed, with k-NN, then linear evaluation), bench.step against PyTorch (ResNet-50 at
# batch 256 with TF32 on and off, ResNet-18 at batch 512), a world of one NCCL rank
# (mpiexec -n 1 ... --distributed) and bench.profile. Each stage runs
# under its own timeout inside a 9-minute deadline (--deadline), and OUT is rewritten after
# every stage: a stage that hangs costs only its own time, and a call cut short still brings
# back what was done. bench/gpu_check.py (the driver this calls) describes every stage.
#
# From the device tool, in one call (timeout_s 600 leaves a minute beyond the deadline):
#
#     run(command='bash bench/gpu_check.sh "$OUT"', carry=[".gpu-cache"], timeout_s=600)
#
# OUT then holds four files: summary.md (each stage's status, seconds, and the end of its log),
# summary.json, logs.tar.gz (every log and result file in full) and kernels.tar.gz (CuPy's
# compiled kernels). Copy kernels.tar.gz to .gpu-cache/ here (git ignores that folder) and the
# next call, carrying .gpu-cache, starts with every kernel compiled instead of minutes of NVRTC.
# To rerun some stages only: bash bench/gpu_check.sh "$OUT" --only tests,profile
#
# Without a GPU (no CuPy, or no device) every stage reads "skipped: no GPU" and the exit status
# is 0: tests/test_gpu_check.py runs it so in CI. Exit status 1: a stage failed or timed out.
#
# Python: $PYTHON if set, else python3, else python (on the GPU machine, python3 holds CuPy and
# PyTorch). No network is used.
set -u

if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "usage: bash bench/gpu_check.sh OUT [--deadline SECONDS] [--only STAGE[,STAGE]]" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python3 || command -v python)}"
if [ -z "$python" ]; then
    echo "bench/gpu_check.sh: error: no python3 or python on PATH (or set PYTHON)" >&2
    exit 2
fi
# the repository importable from any working folder; OUT stays relative to the caller's
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m bench.gpu_check "$@"
