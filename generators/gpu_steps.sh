# Shared by the GPU job scripts (sourced; needs $RUN): run one stage of a job with its output in
# $RUN/NAME.log and a JSON line {stage, rc, seconds} appended to $RUN/job.log.
step() {  # name, command...
    local name=$1; shift
    local start=$SECONDS
    "$@" > "$RUN/$name.log" 2>&1
    echo "{\"stage\": \"$name\", \"rc\": $?, \"seconds\": $((SECONDS - start))}" >> "$RUN/job.log"
}
