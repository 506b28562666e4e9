#!/usr/bin/env bash
# The GPU job of Uni-MDM, meant to run detached (setsid) and be polled:
# 1. train the Crystal DiT for MINUTES of training wall time;
#    meanwhile, when $DATA has no test_pred.pt (the symmetry predictor's top-5 candidates made on
#    the CPU beforehand; test_pred_cpu.pt, the committed CPU predictor's, is only a fallback), a background job trains the symmetry predictor (PRED_MINUTES, on the
#    GPU beside the DiT) and writes test_pred.pt and control_bg{0,1.5,3}.pt into $DATA with the
#    host's CPU cores (pure torch + the Wyckoff tables and wyckoff_ops.pt: no pyxtal needed);
# 2. sample the MP-20 test split with its true space group and Wyckoff assignment (1 DDPM sample each);
# 3. sample the property-control inputs (band-gap targets 0, 1.5, 3 eV) and the predicted-symmetry
#    candidates (top-1, then ranks 2-5), when their inputs exist.
# Progress: $RUN/train_log.jsonl and $RUN/job.log; $RUN/DONE appears at the end.
# Run from the repository root (see README.md here).
#   RUN          output folder                (default runs/unimdm_gpu)
#   DATA         symmetry tensor files        (default .device_data_unimdm)
#   MINUTES      DiT training budget, minutes (default 14)
#   PRED_MINUTES symmetry predictor training budget, minutes, when it runs here (default 4)
#   PRED_STEPS   reverse steps for the predicted-symmetry and control samples (default 1000)
#   GUIDANCE     classifier-free guidance weight for the control samples (default 1.0)
#   TRAIN_ARGS, PRED_TRAIN_ARGS, SAMPLE_ARGS   extra arguments (e.g. "--preset tiny", "--limit 20 --steps 5" for a CPU dry run)
set -u
RUN=${RUN:-runs/unimdm_gpu}
DATA=${DATA:-.device_data_unimdm}
MINUTES=${MINUTES:-14}
PRED_MINUTES=${PRED_MINUTES:-4}
PRED_STEPS=${PRED_STEPS:-1000}
GUIDANCE=${GUIDANCE:-1.0}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RUN"
rm -f "$RUN/DONE" "$RUN/PREDICTOR_DONE"

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
predictor_job() {
    step predictor_train "$PYTHON" -m generators.unimdm.predictor train --data "$DATA" --minutes "$PRED_MINUTES" \
        --device auto --batch 256 --threads 2 --out "$RUN/predictor.pt" ${PRED_TRAIN_ARGS:-}
    step predictor_test "$PYTHON" -m generators.unimdm.predictor predict-split --data "$DATA" --weights "$RUN/predictor.pt" \
        --threads 4 --out "$DATA/test_pred.pt" --json "$RUN/predictor_accuracy.json"
    step predictor_control "$PYTHON" -m generators.unimdm.predictor control --data "$DATA" --weights "$RUN/predictor.pt" --threads 4
    touch "$RUN/PREDICTOR_DONE"
}

if [ ! -f "$DATA/test_pred.pt" ]; then
    predictor_job &
else
    touch "$RUN/PREDICTOR_DONE"
fi
step train "$PYTHON" -m generators.unimdm.train --data "$DATA" --out "$RUN" --minutes "$MINUTES" --batch 512 ${TRAIN_ARGS:-}
sample test_true_ddpm test
for i in $(seq 120); do [ -f "$RUN/PREDICTOR_DONE" ] && break; sleep 5; done
for target in 0 1.5 3; do
    if [ -f "$DATA/control_bg$target.pt" ]; then
        sample "control_bg$target" "control_bg$target" --steps "$PRED_STEPS" --guidance "$GUIDANCE"
    fi
done
PRED_INPUTS=test_pred
if [ ! -f "$DATA/test_pred.pt" ] && [ -f "$DATA/test_pred_cpu.pt" ]; then
    PRED_INPUTS=test_pred_cpu  # the predictor job failed: fall back to the CPU predictor's candidates
fi
if [ -f "$DATA/$PRED_INPUTS.pt" ]; then
    sample test_pred_top1_ddpm "$PRED_INPUTS" --candidates 0 --steps "$PRED_STEPS"
    sample test_pred_rest_ddpm "$PRED_INPUTS" --candidates 1,2,3,4 --steps "$PRED_STEPS"
fi
touch "$RUN/DONE"
