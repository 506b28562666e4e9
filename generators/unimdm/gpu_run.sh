#!/usr/bin/env bash
# The GPU job of Uni-MDM, meant to run detached (setsid) and be polled:
# 1. train the Crystal DiT for MINUTES of training wall time in $RUN/a (TRAIN_ARGS) and, when
#    TRAIN_ARGS_B is set, a second configuration at the same time in $RUN/b (the step is
#    launch-bound, so two runs share the GPU well: 15-16 steps/s each against 17-20 alone);
#    $RUN/model.pt, the weights sampled below, is run a's final EMA weights (SELECT=final), or
#    (SELECT=val_loss) the model_best.pt (EMA weights at the lowest validation loss) of the run
#    with the lowest one. Final is the default: on 2026-12-02 the validation loss bottomed early
#    (82 epochs) while the CSP match rate kept rising with training (val 68.7% -> 70.7% from 82
#    to 156 epochs; test 70.4% for the val-loss pick against 74.9% for 314 epochs);
#    meanwhile, when $DATA has no test_pred.pt (the symmetry predictor's top-5 candidates), a
#    background job makes it and control_bg{0,1.5,3}.pt with the host's CPU cores (pure torch +
#    the Wyckoff tables and wyckoff_ops.pt: no pyxtal needed): with PREDICTOR's weights when set,
#    else after training the predictor on the GPU for PRED_MINUTES (test_pred_cpu.pt, the
#    committed CPU predictor's candidates, is only a fallback);
#    meanwhile too, when SWEEP_LRS is set, a background job samples the first SWEEP_ROWS val
#    crystals with SWEEP_WEIGHTS (default: the committed weights) at each Langevin corrector step
#    size of SWEEP_LRS (sweep_lr$X.pt; the step is launch-bound, so this costs the trainers little);
# 2. sample the predicted-symmetry candidates (top-1), the property-control inputs (band-gap
#    targets 0, 1.5, 3 eV), the first VAL_ROWS val crystals with each run's best and final
#    weights (the record of the selection);
# 3. sample the MP-20 test split with its true space group and Wyckoff assignment (1 DDPM sample
#    each), adding the arguments in $RUN/test_args when that file exists by then (e.g.
#    "--corrector-step-lr 2e-5", chosen on the CPU machine from the sweep while step 2 runs);
# 4. sample candidate ranks 2-3 and 4-5.
# Progress: $RUN/*/train_log.jsonl and $RUN/job.log; $RUN/DONE appears at the end.
# Run from the repository root (see README.md here).
#   RUN          output folder                (default runs/unimdm_gpu)
#   DATA         symmetry tensor files        (default .device_data_unimdm)
#   MINUTES      DiT training budget, minutes (default 14)
#   BATCH        crystals per training step (default 512); LR the peak learning rate at batch 512
#                (default 5e-4), scaled by sqrt(batch / 512) for other batches
#   PROBE_BATCHES e.g. "512 1024 2048": train each for PROBE_MINUTES (default 0.5) first and take
#                the one with the most crystals/s (a larger one only when at least 1.25x faster
#                than the best smaller one: more steps per crystal learn more per crystal)
#   PREDICTOR    trained symmetry predictor weights (default: train one here)
#   PRED_MINUTES symmetry predictor training budget, minutes, when it trains here (default 4)
#   PRED_STEPS   reverse steps for the predicted-symmetry and control samples (default 1000)
#   GUIDANCE     classifier-free guidance weight for the control samples (default 1.0)
#   SELECT       final (default) or val_loss: which weights become $RUN/model.pt
#   TRAIN_THREADS CPU threads of each trainer (default 4)
#   VAL_ROWS     val crystals sampled with each run's best and final weights (default 0: none)
#   SWEEP_LRS    corrector step sizes to sample val with, e.g. "0 1e-5 2e-5" (default: none)
#   SWEEP_ROWS   val crystals per sweep setting (default 1000); SWEEP_WEIGHTS (default the committed weights)
#   TRAIN_ARGS, TRAIN_ARGS_B, PRED_TRAIN_ARGS, SAMPLE_ARGS   extra arguments (e.g. "--preset tiny",
#                "--limit 20 --steps 5" for a CPU dry run)
set -u
RUN=${RUN:-runs/unimdm_gpu}
DATA=${DATA:-.device_data_unimdm}
MINUTES=${MINUTES:-14}
BATCH=${BATCH:-512}
LR=${LR:-5e-4}
PROBE_BATCHES=${PROBE_BATCHES:-}
PROBE_MINUTES=${PROBE_MINUTES:-0.5}
PRED_MINUTES=${PRED_MINUTES:-4}
PRED_STEPS=${PRED_STEPS:-1000}
GUIDANCE=${GUIDANCE:-1.0}
VAL_ROWS=${VAL_ROWS:-0}
SWEEP_LRS=${SWEEP_LRS:-}
SWEEP_ROWS=${SWEEP_ROWS:-1000}
SWEEP_WEIGHTS=${SWEEP_WEIGHTS:-generators/weights/unimdm/model.pt}
SELECT=${SELECT:-final}
PREDICTOR=${PREDICTOR:-}
TRAIN_THREADS=${TRAIN_THREADS:-4}  # CPU threads per trainer: two trainers at torch's default (all 16 cores each) beside
                                   # the predictor's job stalled for 9 minutes before their first step (2026-12-02)
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RUN"
rm -f "$RUN/DONE" "$RUN/PREDICTOR_DONE" "$RUN/SWEEP_DONE"

# shellcheck source=../gpu_steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/../gpu_steps.sh"  # step NAME COMMAND...: a stage logged in $RUN/job.log
sample() {  # name, inputs, extra arguments... (weights: $WEIGHTS, default $RUN/model.pt)
    local name=$1 inputs=$2; shift 2
    step "$name" "$PYTHON" -m generators.unimdm.sample_tensors --weights "${WEIGHTS:-$RUN/model.pt}" --data "$DATA" \
        --inputs "$inputs" --samples 1 --method ddpm --out "$RUN/$name.pt" "$@" ${SAMPLE_ARGS:-}
}
predictor_job() {
    local weights=$PREDICTOR
    if [ -z "$weights" ]; then
        weights=$RUN/predictor.pt
        step predictor_train "$PYTHON" -m generators.unimdm.predictor train --data "$DATA" --minutes "$PRED_MINUTES" \
            --device auto --batch 256 --threads 2 --out "$weights" ${PRED_TRAIN_ARGS:-}
    fi
    step predictor_test "$PYTHON" -m generators.unimdm.predictor predict-split --data "$DATA" --weights "$weights" \
        --threads 4 --out "$DATA/test_pred.pt" --json "$RUN/predictor_accuracy.json"
    step predictor_control "$PYTHON" -m generators.unimdm.predictor control --data "$DATA" --weights "$weights" --threads 4
    touch "$RUN/PREDICTOR_DONE"
}

if [ ! -f "$DATA/test_pred.pt" ]; then
    predictor_job &
else
    touch "$RUN/PREDICTOR_DONE"
fi
sweep_job() {
    for lr in $SWEEP_LRS; do
        WEIGHTS=$SWEEP_WEIGHTS sample "sweep_lr$lr" val --limit "$SWEEP_ROWS" --corrector-step-lr "$lr" --threads 2
    done
    touch "$RUN/SWEEP_DONE"
}
[ -n "$SWEEP_LRS" ] && sweep_job &
crystals_per_s() {  # train_log.jsonl, batch: crystals/s of the last logged interval (0 when none)
    "$PYTHON" -c 'import json, sys
rates = [json.loads(line).get("steps_per_s") for line in open(sys.argv[1])]
rates = [r for r in rates if r]
print(rates[-1] * int(sys.argv[2]) if rates else 0)' "$1" "$2" 2>/dev/null || echo 0
}
probe_batch() {  # the batch of PROBE_BATCHES (ascending) with the most crystals/s, by 1.25x steps
    local best=$BATCH best_rate=0 rate
    for b in $PROBE_BATCHES; do
        step "probe_$b" "$PYTHON" -m generators.unimdm.train --data "$DATA" --out "$RUN/probe_$b" --minutes 10 \
            --stop-after "$PROBE_MINUTES" --batch "$b" --threads "$TRAIN_THREADS" --log-seconds 5 --val-seconds 1e9 \
            --save-seconds 1e9 ${TRAIN_ARGS:-}
        rate=$(crystals_per_s "$RUN/probe_$b/train_log.jsonl" "$b")
        echo "{\"probe_batch\": $b, \"crystals_per_s\": $rate}" >> "$RUN/job.log"
        if "$PYTHON" -c 'import sys; sys.exit(not float(sys.argv[1]) > 1.25 * float(sys.argv[2]))' "$rate" "$best_rate"; then
            best=$b best_rate=$rate
        fi
    done
    echo "$best"
}
[ -n "$PROBE_BATCHES" ] && BATCH=$(probe_batch)
LR_A=$("$PYTHON" -c 'import sys; print(f"{float(sys.argv[1]) * (int(sys.argv[2]) / 512) ** 0.5:.3g}")' "$LR" "$BATCH")
echo "{\"batch\": $BATCH, \"lr\": $LR_A}" >> "$RUN/job.log"
step train_a "$PYTHON" -m generators.unimdm.train --data "$DATA" --out "$RUN/a" --minutes "$MINUTES" --batch "$BATCH" --lr "$LR_A" --threads "$TRAIN_THREADS" ${TRAIN_ARGS:-} &
TRAINERS=$!
RUNS=a
if [ -n "${TRAIN_ARGS_B:-}" ]; then
    step train_b "$PYTHON" -m generators.unimdm.train --data "$DATA" --out "$RUN/b" --minutes "$MINUTES" --batch 512 --lr "$LR" --threads "$TRAIN_THREADS" $TRAIN_ARGS_B &
    TRAINERS="$TRAINERS $!"
    RUNS="a b"
fi
wait $TRAINERS
if [ "$SELECT" = val_loss ]; then
    step select "$PYTHON" -m generators.unimdm.checkpoint select "$RUN/model.pt" $(for r in $RUNS; do echo "$RUN/$r/model_best.pt"; done)
else
    step select cp "$RUN/a/model.pt" "$RUN/model.pt"
fi
for i in $(seq 120); do [ -f "$RUN/PREDICTOR_DONE" ] && break; sleep 5; done
PRED_INPUTS=test_pred
if [ ! -f "$DATA/test_pred.pt" ] && [ -f "$DATA/test_pred_cpu.pt" ]; then
    PRED_INPUTS=test_pred_cpu  # the predictor job failed: fall back to the CPU predictor's candidates
fi
if [ -f "$DATA/$PRED_INPUTS.pt" ]; then
    sample test_pred_top1_ddpm "$PRED_INPUTS" --candidates 0 --steps "$PRED_STEPS"
fi
for target in 0 1.5 3; do
    if [ -f "$DATA/control_bg$target.pt" ]; then
        sample "control_bg$target" "control_bg$target" --steps "$PRED_STEPS" --guidance "$GUIDANCE"
    fi
done
if [ "$VAL_ROWS" -gt 0 ]; then
    for r in $RUNS; do
        for w in model_best model; do
            WEIGHTS=$RUN/$r/$w.pt sample "val_${r}_$w" val --limit "$VAL_ROWS"
        done
    done
fi
# shellcheck disable=SC2046  # test_args holds several words on purpose
sample test_true_ddpm test $(cat "$RUN/test_args" 2>/dev/null)
if [ -f "$DATA/$PRED_INPUTS.pt" ]; then  # in two parts, so that ranks 2-3 come back when time runs short
    sample test_pred_rank23_ddpm "$PRED_INPUTS" --candidates 1,2 --steps "$PRED_STEPS"
    sample test_pred_rank45_ddpm "$PRED_INPUTS" --candidates 3,4 --steps "$PRED_STEPS"
fi
touch "$RUN/DONE"
