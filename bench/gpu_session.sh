#!/usr/bin/env bash
# Everything a lent GPU machine is needed for, in one call: offline install, the test suite with
# the kernels compiled (not interpreted), a profile of A and B, and the benchmark.
#
#   BSS2_GIT_COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_session.sh [tests] [profile] [bench]
#
# Logs, the benchmark's CSV and plot land in $OUT (default /tmp/bss2-gpu). Wheels of packages the
# machine lacks (snntorch) may be carried in .whl/. Each step has its own time limit (seconds,
# overridable) so that one hung step cannot eat the others.
set -uo pipefail
OUT=${OUT:-/tmp/bss2-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
T_TESTS=${T_TESTS:-300} T_PROFILE=${T_PROFILE:-90} T_BENCH=${T_BENCH:-300}
# BENCH_WORKLOADS: names of bench/registry.py (default: all), BENCH_ARGS: more bss2 bench flags
BENCH_ARGS=${BENCH_ARGS:-}
step() { echo "== $* ($(date +%T))"; }

step install
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
$PY -c "import torch, triton, snntorch, bss2_backend; print('torch', torch.__version__, 'triton', \
triton.__version__, 'snntorch', snntorch.__version__, torch.cuda.get_device_name())" || exit 1

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests profile bench)
for s in "${steps[@]}"; do
    case $s in
    tests)
        step "tests (compiled kernels)"
        # --dist loadfile: a module's shared fixtures (the CLI corpus runs ~100 processes) are
        # built once, in one worker
        timeout "$T_TESTS" $PY -m pytest -q -p no:cacheprovider -n 8 --dist loadfile --timeout 240 tests/ \
            2>&1 | tee "$OUT/pytest.log" | tail -40 ;;
    profile)
        step profile
        timeout "$T_PROFILE" $PY -m bss2_backend.bench.profile --workloads A B \
            --impls "bss2.ideal[triton]" "bss2.chip[triton]" --modes fwd fwd+bwd \
            --iters 20 --rows 30 > "$OUT/profile.log" 2>&1
        tail -12 "$OUT/profile.log" ;;
    bench)
        # one process per workload, each appending its rows to $OUT/results.csv, so that a time
        # limit loses only the workloads it cuts off; the whole step stops after T_BENCH seconds
        step bench
        end=$((SECONDS + T_BENCH))
        export BSS2_RUN_ID=${BSS2_RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}
        for w in ${BENCH_WORKLOADS:-A B A-fp B-large C-4096 C-8192 C-16384}; do
            left=$((end - SECONDS))
            [ $left -le 10 ] && { echo "bench: no time left for $w"; continue; }
            # shellcheck disable=SC2086
            timeout "$left" $PY -m bss2_backend.bench --out "$OUT" --workloads "$w" $BENCH_ARGS \
                >> "$OUT/bench.log" 2>&1 || echo "bench $w: exit $?"
        done
        grep -E "^(A|B|C|A-fp|B-large|C-[0-9]+) " "$OUT/bench.log" | grep -v "^  " ;;
    *) echo "unknown step $s (tests | profile | bench)"; exit 2 ;;
    esac
done
step done
