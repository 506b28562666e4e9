#!/usr/bin/env bash
# The GPU job of Uni-MDM's Crystal DiT, meant to run detached (setsid) and be polled:
# train for MINUTES of training wall time, then sample the MP-20 test split with its true
# space group and Wyckoff assignment (1 DDPM sample per crystal), then, when their input files
# exist in $DATA (made on the CPU by the symmetry predictor), the predicted-symmetry candidates
# (test_pred.pt: top-5 per crystal) and the property-control inputs (control_bg*.pt).
# Progress: $RUN/train_log.jsonl and $RUN/job.log; $RUN/DONE appears at the end.
# Run from the repository root (see README.md here).
#   RUN          output folder                (default runs/unimdm_gpu)
#   DATA         symmetry tensor files        (default .device_data_unimdm)
#   MINUTES      training budget, minutes     (default 17)
#   PRED_STEPS   reverse steps for the predicted-symmetry and control samples (default 1000)
#   GUIDANCE     classifier-free guidance weight for the control samples (default 1.0)
#   TRAIN_ARGS   extra arguments for generators.unimdm.train (e.g. "--preset tiny" for a CPU dry run)
#   SAMPLE_ARGS  extra arguments for each sample_tensors call (e.g. "--limit 20 --steps 5")
set -u
RUN=${RUN:-runs/unimdm_gpu}
DATA=${DATA:-.device_data_unimdm}
MINUTES=${MINUTES:-17}
PRED_STEPS=${PRED_STEPS:-1000}
GUIDANCE=${GUIDANCE:-1.0}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RUN"
rm -f "$RUN/DONE"

step() {  # name, command...: run one stage, note its exit status and duration in job.log
    local name=$1; shift
    local start=$SECONDS
    "$@" > "$RUN/$name.log" 2>&1
    echo "{\"stage\": \"$name\", \"rc\": $?, \"seconds\": $((SECONDS - start))}" >> "$RUN/job.log"
}
sample() {  # name, inputs, extra arguments...
    local name=$1 inputs=$2; shift 2
    step "$name" "$PYTHON" -m generators.unimdm.sample_tensors --weights "$RUN/model.pt" --data "$DATA" \
        --inputs "$inputs" --samples 1 --method ddpm --out "$RUN/$name.pt" "$@" ${SAMPLE_ARGS:-}
}

step train "$PYTHON" -m generators.unimdm.train --data "$DATA" --out "$RUN" --minutes "$MINUTES" --batch 256 ${TRAIN_ARGS:-}
sample test_true_ddpm test
if [ -f "$DATA/test_pred.pt" ]; then
    sample test_pred_ddpm test_pred --steps "$PRED_STEPS"
fi
for target in 0 1.5 3; do
    if [ -f "$DATA/control_bg$target.pt" ]; then
        sample "control_bg$target" "control_bg$target" --steps "$PRED_STEPS" --guidance "$GUIDANCE"
    fi
done
touch "$RUN/DONE"
