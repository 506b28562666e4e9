#!/usr/bin/env bash
# Fine-tune several configurations of the Crystal DiT side by side on one GPU, each from the same
# model file, then sample the first VAL_ROWS val crystals (true symmetry, 1 DDPM sample of 1000
# steps) with each and with the start model, all at once (the sampler is launch-bound, so the
# jobs share the GPU well). The CPU machine then picks by CSP match rate on val
# (`python -m evals.bench_csp_unimdm --samples RUN/val_NAME.pt`): the validation loss does not
# follow the match rate (see the model card).
#   START     model.pt to resume              (default generators/weights/unimdm/model.pt)
#   RUN       output folder                   (default runs/compare)
#   DATA      symmetry tensor files           (default .device_data_unimdm)
#   MINUTES   training budget of each configuration, minutes (default 7)
#   BATCH, LR crystals per step and peak learning rate of each (default 1024, 3e-4)
#   CONFIGS   one "NAME=extra training arguments" per line (default: the same network continued, the
#             control; distance features; distance features with monoclinic and triclinic crystals
#             drawn 3 times per pass)
#   VAL_ROWS  val crystals sampled per model  (default 600: four models at once, 1000 steps, take
#             93 s each without distance features and 182 s with them on an H200)
#   THREADS   CPU threads per trainer (default 4); TRAIN_ARGS, SAMPLE_ARGS extra arguments for all
#             (e.g. "--train-limit 8" and "--steps 4 --device cpu" for a CPU dry run)
#   SAMPLE_SECONDS  stop the val sampling after this many seconds (default: no limit)
#   COPY_TO   a folder that receives the results as soon as each phase ends (the device's $OUT: at
#             most 8 files come back): NAME.pt (the model) after training, train_logs.tgz, then val.tgz
# Writes RUN/NAME/{model.pt,train_log.jsonl}, RUN/val_NAME.pt, RUN/val_start.pt and RUN/job.log
# (one JSON line per stage: name, exit status, seconds).
set -u
START=${START:-generators/weights/unimdm/model.pt}
RUN=${RUN:-runs/compare}
DATA=${DATA:-.device_data_unimdm}
MINUTES=${MINUTES:-7}
BATCH=${BATCH:-1024}
LR=${LR:-3e-4}
VAL_ROWS=${VAL_ROWS:-600}
THREADS=${THREADS:-4}
CONFIGS=${CONFIGS:-"continued=
metric=--metric-features 12
metric_low3=--metric-features 12 --low-symmetry-weight 3"}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RUN"

# shellcheck source=../gpu_steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/../gpu_steps.sh"  # step NAME COMMAND... (a stage logged in $RUN/job.log), fine_tune NAME ARGS

names=()
while IFS= read -r line; do
    [ -z "$line" ] && continue
    names+=("${line%%=*}")
    fine_tune "${line%%=*}" "${line#*=}" &
done <<< "$CONFIGS"
wait
if [ -n "${COPY_TO:-}" ]; then
    for name in "${names[@]}"; do cp "$RUN/$name/model.pt" "$COPY_TO/$name.pt"; done
    tar czf "$COPY_TO/train_logs.tgz" -C "$RUN" job.log $(for n in "${names[@]}"; do echo "$n/train_log.jsonl train_$n.log"; done)
fi

sample_val() {  # name, weights
    # shellcheck disable=SC2086
    step "val_$1" ${SAMPLE_SECONDS:+timeout "$SAMPLE_SECONDS"} "$PYTHON" -m generators.unimdm.sample_tensors --weights "$2" --data "$DATA" --inputs val \
        --limit "$VAL_ROWS" --samples 1 --method ddpm --threads 2 --out "$RUN/val_$1.pt" ${SAMPLE_ARGS:-}
}
sample_val start "$START" &
for name in "${names[@]}"; do
    sample_val "$name" "$RUN/$name/model.pt" &
done
wait
if [ -n "${COPY_TO:-}" ]; then
    (cd "$RUN" && tar czf "$COPY_TO/val.tgz" job.log val_*)
fi
