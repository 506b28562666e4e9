# Shared by the GPU job scripts (sourced; needs $RUN): step runs one stage of a job with its output in
# $RUN/NAME.log and a JSON line {stage, rc, seconds} appended to $RUN/job.log, and returns the
# stage's rc; fine_tune is one Uni-MDM fine-tuning stage (gpu_compare.sh, gpu_soup.sh).
step() {  # name, command...
    local name=$1; shift
    local start=$SECONDS
    "$@" > "$RUN/$name.log" 2>&1
    local rc=$?
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >> "$RUN/job.log"
    return $rc
}

fine_tune() {  # name, extra training arguments (one string): the Uni-MDM DiT resumed from $START into $RUN/NAME
    # for $MINUTES (needs DATA, BATCH, LR, THREADS, PYTHON; TRAIN_ARGS added to every run)
    # shellcheck disable=SC2086  # the extra arguments are several words on purpose
    step "train_$1" "$PYTHON" -m generators.unimdm.train --data "$DATA" --out "$RUN/$1" --minutes "$MINUTES" \
        --batch "$BATCH" --lr "$LR" --threads "$THREADS" --val-seconds 1e9 --resume "$START" $2 ${TRAIN_ARGS:-}
}
