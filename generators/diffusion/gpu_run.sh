#!/usr/bin/env bash
# The GPU job of the diffusion model, meant to run detached (setsid) and be polled:
# train for MINUTES of training wall time, then sample the MP-20 test split
# (1 DDPM sample per crystal, 10 fast samples per crystal, and the 20-atom cells for
# throughput). Progress: $RUN/train_log.jsonl and $RUN/job.log; $RUN/DONE appears at the end.
# Run from the repository root with the tensor files in .device_data (see README.md here).
#   RUN       output folder            (default runs/diffusion_gpu)
#   MINUTES   training budget, minutes (default 22)
#   TRAIN_ARGS extra arguments for generators.diffusion.train (e.g. "--resume runs/diffusion_gpu/checkpoint.pt")
#   SAMPLE_ARGS extra arguments for each sample_tensors call (e.g. "--limit 20 --steps 5" for a CPU dry run)
set -u
RUN=${RUN:-runs/diffusion_gpu}
MINUTES=${MINUTES:-22}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RUN"
rm -f "$RUN/DONE"

# shellcheck source=../gpu_steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/../gpu_steps.sh"  # step NAME COMMAND...: a stage logged in $RUN/job.log

step train "$PYTHON" -m generators.diffusion.train --data .device_data --out "$RUN" --minutes "$MINUTES" \
    --batch 512 --compile ${TRAIN_ARGS:-}
step sample_ddpm1 "$PYTHON" -m generators.diffusion.sample_tensors --weights "$RUN/model.pt" --data .device_data \
    --split test --samples 1 --method ddpm --out "$RUN/test_ddpm1.pt" ${SAMPLE_ARGS:-}
step sample_fast10 "$PYTHON" -m generators.diffusion.sample_tensors --weights "$RUN/model.pt" --data .device_data \
    --split test --samples 10 --method fast --out "$RUN/test_fast10.pt" ${SAMPLE_ARGS:-}
step throughput20 "$PYTHON" -m generators.diffusion.sample_tensors --weights "$RUN/model.pt" --data .device_data \
    --split test --n-atoms 20 --samples 4 --method fast --out "$RUN/throughput20_fast.pt" ${SAMPLE_ARGS:-}
touch "$RUN/DONE"
