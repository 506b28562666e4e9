#!/usr/bin/env bash
# Continue one Crystal DiT on one GPU (every step replayed as a CUDA graph), then sample the
# complete MP-20 test split with its true symmetry (1 DDPM sample of 1000 steps each) in the same
# device call, so that a machine started once gives both the weights and their test samples (runs
# 10 and 11 of the model card). The CPU machine then scores the samples:
# `python -m evals.bench_csp_unimdm --samples COPY_TO/test.pt`.
#   START        model.pt (new AdamW and cosine; an int8 file of `checkpoint quantize` too) or
#                checkpoint.pt (continues its cosine) to resume (default generators/weights/unimdm/model.pt),
#                or "scratch": a new network of PRESET (default base; e.g. csp: a CSPNet message-passing
#                layer before each of the first 4 blocks) with the training files' k normaliser (LR=5e-4
#                as the first runs)
#   PRESET       the network of START=scratch (a resumed network keeps its own)
#   RUN          output folder of the trainer (default runs/continue)
#   DATA         symmetry tensor files (default .device_data_unimdm)
#   MINUTES      length of the cosine in minutes of training (default 5: 16,600 steps, ~314 epochs
#                of the 27,136 at batch 512 on an H100)
#   STOP_AFTER   end the trainer this many minutes after it starts (default MINUTES + 0.5: the
#                cosine ends; less to split one cosine over two calls of one warm machine, the
#                second with START=RUN/checkpoint.pt and the same GROW_ARGS)
#   TRAIN_SETS   comma-separated training split files (default train,val_rest: the standard 27,136;
#                add mp2018_extra for the 2018 MP crystals outside MP-20, generators/unimdm/data.py)
#   BATCH, LR    crystals per step and peak learning rate (default 512, 3e-4)
#   GROW_ARGS    training arguments that change the network, e.g. "--message-layers 4" (it grows
#                CSPNet message layers, identities at first) or "--self-conditioning" (zero maps of
#                the network's own clean estimate; run 13: MINUTES=8.8, one call, 42 steps/s)
#   PREFLIGHT    a preset of `evals.profile_unimdm_step` with the grown network's shape (csp for
#                "--message-layers 4"): profile its step first and, when no CUDA graph could be
#                recorded (the step would run eagerly, 3x slower), drop GROW_ARGS and continue the
#                network as it is
#   TRAIN_ARGS   other training arguments, always passed
#   SAMPLE_SECONDS  stop the test sampling after this many seconds (default 280; the split takes
#                ~200 s replayed on an H100, 381 s with 4 message layers, so a grown network
#                samples in a call of its own); 0: no sampling (a cosine split over calls samples
#                after the last)
#   PART_BYTES   files larger than this reach COPY_TO in parts (`split -b`; default 15000000: the
#                device returns files of at most 16 MiB): join them with `cat model.pt.part-* > model.pt`
#   THREADS      CPU threads (default 8); SAMPLE_ARGS extra sampling arguments; PYTHON (python3)
#   COPY_TO      where the results go as each phase ends (the device's $OUT; default RUN):
#                model.pt, train_log.jsonl, test.pt, job.log (one JSON line per stage, gpu_steps.sh's
#                step: name, rc, seconds; the stages' output is in RUN/NAME.log)
# CPU dry run (40 s): `DATA=.device_data_unimdm RUN=/tmp/dryc MINUTES=0.2 BATCH=8 THREADS=2 PYTHON=python
#   GROW_ARGS="--message-layers 4" TRAIN_ARGS="--train-limit 64 --device cpu"
#   SAMPLE_ARGS="--limit 3 --steps 3 --device cpu" COPY_TO=/tmp/dryc/out bash generators/unimdm/gpu_continue.sh`
#   (with PREFLIGHT=csp it drops GROW_ARGS: no CUDA graphs on the CPU).
set -u
PYTHON=${PYTHON:-python3}
START=${START:-generators/weights/unimdm/model.pt}
PRESET=${PRESET:-base}
RUN=${RUN:-runs/continue}
DATA=${DATA:-.device_data_unimdm}
MINUTES=${MINUTES:-5}
STOP_AFTER=${STOP_AFTER:-$("$PYTHON" -c "print($MINUTES + 0.5)")}
BATCH=${BATCH:-512}
LR=${LR:-3e-4}
TRAIN_SETS=${TRAIN_SETS:-train,val_rest}
GROW_ARGS=${GROW_ARGS:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
PREFLIGHT=${PREFLIGHT:-}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-280}
THREADS=${THREADS:-8}
SAMPLE_ARGS=${SAMPLE_ARGS:-}
COPY_TO=${COPY_TO:-$RUN}
mkdir -p "$RUN" "$COPY_TO"
rm -f "$RUN/job.log"  # this call's stages only
# shellcheck source=../gpu_steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/../gpu_steps.sh"  # step NAME COMMAND...: a stage logged in $RUN/job.log
PART_BYTES=${PART_BYTES:-15000000}
report() {  # a file over PART_BYTES goes in parts NAME.part-aa, -ab, ... (16 MiB a file comes back from the device)
    [ "$COPY_TO" -ef "$RUN" ] && return
    for file in "$@" "$RUN/job.log"; do
        [ -f "$file" ] || continue
        if [ "$(stat -c %s "$file")" -gt "$PART_BYTES" ]; then
            split -b "$PART_BYTES" "$file" "$COPY_TO/$(basename "$file").part-"
        else
            cp "$file" "$COPY_TO/"
        fi
    done
}

if [ -n "$PREFLIGHT" ]; then
    step preflight "$PYTHON" -m evals.profile_unimdm_step --data "$DATA" --preset "$PREFLIGHT" --batch "$BATCH" \
        --warmup 20 --steps 10 --profile-steps 1 --cuda-graphs --threads "$THREADS" --json "$RUN/preflight.json"
    if ! "$PYTHON" -c "import json, sys; sys.exit(json.load(open('$RUN/preflight.json'))['graphs_recorded'] == 0)"; then
        echo "{\"stage\": \"preflight\", \"dropped\": \"$GROW_ARGS\"}" >> "$RUN/job.log"
        GROW_ARGS=""
    fi
fi
ORIGIN=(--resume "$START")
[ "$START" = scratch ] && ORIGIN=(--preset "$PRESET")
# shellcheck disable=SC2086  # GROW_ARGS, TRAIN_ARGS and SAMPLE_ARGS are word lists
step train "$PYTHON" -m generators.unimdm.train --data "$DATA" --out "$RUN" --minutes "$MINUTES" \
    --stop-after "$STOP_AFTER" --batch "$BATCH" --lr "$LR" --threads "$THREADS" --val-seconds 1e9 \
    --log-seconds 60 --train-sets "$TRAIN_SETS" --cuda-graphs "${ORIGIN[@]}" $GROW_ARGS $TRAIN_ARGS
trained=$?
if [ "$trained" != 0 ]; then  # a failed trainer may leave an older model.pt in RUN: never pass that on as new
    report
    grep -v Warn "$RUN/train.log" | tail -n 5
    exit "$trained"
fi
report "$RUN/model.pt" "$RUN/train_log.jsonl"
[ "$SAMPLE_SECONDS" = 0 ] && exit 0
# shellcheck disable=SC2086
step sample timeout "$SAMPLE_SECONDS" "$PYTHON" -m generators.unimdm.sample_tensors --weights "$RUN/model.pt" \
    --data "$DATA" --inputs test --cuda-graphs --threads "$THREADS" --out "$RUN/test.pt" $SAMPLE_ARGS
report "$RUN/test.pt"
grep -v Warn "$RUN/sample.log" | tail -n 2
