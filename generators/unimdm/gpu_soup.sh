#!/usr/bin/env bash
# A "model soup" of Crystal DiT fine-tunings on one GPU, with val samplings to choose by:
# 1. fine-tune START with each TUNES line side by side (seeds differ), while the VAL lines'
#    weights and sampling settings sample the first VAL_ROWS val crystals (the sampler and the
#    training step are launch-bound, so they share the GPU well);
# 2. average START, WITH (more fine-tunings of START, e.g. an earlier run's) and the new
#    fine-tunings into RUN/soup.pt (`python -m generators.unimdm.checkpoint average`) and sample
#    val with it under each SOUP_SAMPLING setting.
# The CPU machine then picks by CSP match rate on val (`python -m evals.bench_csp_unimdm --split
# val --samples RUN/val_NAME.pt`), never on test.
#   START     model.pt the fine-tunings start from (default generators/weights/unimdm/model.pt)
#   WITH      more model files for the soup, space-separated (default none)
#   RUN       output folder (default runs/soup); DATA symmetry tensor files (default .device_data_unimdm)
#   MINUTES   training budget of each fine-tuning, minutes (default 4.5)
#   BATCH, LR crystals per step and peak learning rate (default 1024, 3e-4)
#   TUNES     one "NAME=extra training arguments" per line (default: seeds 1 and 2)
#   VAL       one "NAME=weights extra sampling arguments" per line, sampled during the training
#             (default: START with the default sampler, and START with the cooler sampler)
#   SOUP_SAMPLING  one "NAME=extra sampling arguments" per line for the soup (default: the
#             default sampler and the cooler one)
#   VAL_ROWS  val crystals per sampling (default 2048, all of val.pt)
#   THREADS   CPU threads per trainer (default 3); TRAIN_ARGS, SAMPLE_ARGS extra arguments for all
#             (e.g. "--train-limit 8" and "--steps 4 --device cpu" for a CPU dry run)
#   COPY_TO   a folder that receives the results (the device's $OUT: at most 8 files come back):
#             NAME.pt per fine-tuning and soup.pt, then val.tgz (val samples, logs)
# RUN/job.log holds one JSON line per stage (name, exit status, seconds).
set -u
START=${START:-generators/weights/unimdm/model.pt}
WITH=${WITH:-}
RUN=${RUN:-runs/soup}
DATA=${DATA:-.device_data_unimdm}
MINUTES=${MINUTES:-4.5}
BATCH=${BATCH:-1024}
LR=${LR:-3e-4}
VAL_ROWS=${VAL_ROWS:-2048}
THREADS=${THREADS:-3}
TUNES=${TUNES:-"tune1=--seed 1
tune2=--seed 2"}
VAL=${VAL:-"start=$START
start_cool=$START --lattice-eta 0 --coordinate-temperature 0.75"}
SOUP_SAMPLING=${SOUP_SAMPLING:-"soup=
soup_cool=--lattice-eta 0 --coordinate-temperature 0.75"}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RUN"

# shellcheck source=../gpu_steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/../gpu_steps.sh"  # step NAME COMMAND... (a stage logged in $RUN/job.log), fine_tune NAME ARGS

sample_val() {  # name, weights, extra arguments...
    local name=$1 weights=$2; shift 2
    # shellcheck disable=SC2086
    step "val_$name" "$PYTHON" -m generators.unimdm.sample_tensors --weights "$weights" --data "$DATA" --inputs val \
        --limit "$VAL_ROWS" --samples 1 --method ddpm --threads 2 --out "$RUN/val_$name.pt" "$@" ${SAMPLE_ARGS:-}
}

tuned=()
while IFS= read -r line; do
    [ -z "$line" ] && continue
    tuned+=("$RUN/${line%%=*}/model.pt")
    fine_tune "${line%%=*}" "${line#*=}" &
done <<< "$TUNES"
samplers=()
while IFS= read -r line; do
    [ -z "$line" ] && continue
    # shellcheck disable=SC2086
    sample_val "${line%%=*}" ${line#*=} &
    samplers+=($!)
done <<< "$VAL"
for job in $(jobs -p); do
    case " ${samplers[*]} " in *" $job "*) ;; *) wait "$job" ;; esac  # the trainers
done

# shellcheck disable=SC2086
step soup "$PYTHON" -m generators.unimdm.checkpoint average "$RUN/soup.pt" "$START" $WITH "${tuned[@]}"
if [ -n "${COPY_TO:-}" ]; then
    for model in "${tuned[@]}" "$RUN/soup.pt"; do
        name=$(basename "$(dirname "$model")"); [ "$model" = "$RUN/soup.pt" ] && name=soup
        cp "$model" "$COPY_TO/$name.pt"
    done
fi
while IFS= read -r line; do
    [ -z "$line" ] && continue
    # shellcheck disable=SC2086
    sample_val "${line%%=*}" "$RUN/soup.pt" ${line#*=} &
done <<< "$SOUP_SAMPLING"
wait
if [ -n "${COPY_TO:-}" ]; then
    (cd "$RUN" && tar czf "$COPY_TO/val.tgz" val_*.pt ./*.log ./*/train_log.jsonl)
fi
