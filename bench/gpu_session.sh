#!/usr/bin/env bash
# Everything a lent GPU machine is needed for, in one call that ends within a deadline: offline
# install, the benchmark (its own correctness gate checks the compiled kernels against their
# twins first), the GPU tests (compiled kernels, CUDA graphs, int8 products, two DDP ranks on one
# GPU), the first GPU training runs, and a profile. The most valuable measurements come first.
#
#   bash bench/gpu_kit.sh                      # here, before: wheels and MNIST into the tree
#   BSS2_GIT_COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_session.sh [steps...]
#   (device run with carry [".whl", ".gpu-data"], timeout_s a little above DEADLINE)
#
# steps: bench tests train profile (default: all, in that order). At most 8 files land in $OUT
# (default /tmp/bss2-gpu; what the device tool brings back): results.csv, bench.log, pytest.log,
# train.log, train-digits.json, train-digits-nograph.json, train-mnist.json, profile.log; the
# training runs' checkpoints stay in /tmp. DEADLINE (seconds, default 480) is the whole
# script's; each step also has its own limit (T_*), cut to the time left.
set -uo pipefail
START=$SECONDS
DEADLINE=${DEADLINE:-480}
OUT=${OUT:-/tmp/bss2-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
T_BENCH=${T_BENCH:-240} T_TESTS=${T_TESTS:-150} T_TRAIN=${T_TRAIN:-120} T_PROFILE=${T_PROFILE:-60}
# BENCH_WORKLOADS: names of bench/registry.py, most valuable first; BENCH_ARGS: more flags
BENCH_WORKLOADS=${BENCH_WORKLOADS:-A A-loop B B-large C-16384 A-fp A-loop-64 C-4096}
BENCH_ARGS=${BENCH_ARGS:-}
step() { echo "== $* ($(date +%T), $((SECONDS - START)) s)"; }
left() { local l=$((DEADLINE - (SECONDS - START) - 5)); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }

step install
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
$PY -c "import torch, triton, snntorch, bss2_backend; print('torch', torch.__version__, 'triton', \
triton.__version__, 'snntorch', snntorch.__version__, torch.cuda.get_device_name())" || exit 1
export BSS2_RUN_ID=${BSS2_RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(bench tests train profile)
for s in "${steps[@]}"; do
    case $s in
    bench)
        # one process per workload, each appending its rows to $OUT/results.csv, so that a limit
        # loses only the workloads it cuts off
        step bench
        end=$((SECONDS + $(left "$T_BENCH")))
        for w in $BENCH_WORKLOADS; do
            l=$((end - SECONDS))
            [ $l -le 15 ] && { echo "bench: no time left for $w"; continue; }
            # shellcheck disable=SC2086
            timeout "$l" $PY -m bss2_backend.bench --out "$OUT" --workloads "$w" --quick \
                --no-plot $BENCH_ARGS >> "$OUT/bench.log" 2>&1 || echo "bench $w: exit $?"
        done
        grep -E "check (fail|error)" "$OUT/bench.log"
        grep -E "^(A|B|C|A-fp|A-loop|A-loop-64|B-large|C-[0-9]+) " "$OUT/bench.log" ;;
    tests)
        step "tests (compiled kernels, graphs, int8 products, DDP on one GPU)"
        l=$(left "$T_TESTS"); [ "$l" -le 20 ] && { echo "tests: no time left"; continue; }
        timeout "$l" $PY -m pytest -q -p no:cacheprovider -n 8 --dist loadfile --timeout 120 \
            tests/test_op_chip_lif.py tests/test_op_chip_lif_noise.py tests/test_op_snn_neuron.py \
            tests/test_graphs.py tests/test_noise_counters.py tests/test_exact_products.py \
            tests/test_recurrent_strategies.py tests/test_train.py tests/test_hardening_api.py \
            2>&1 | tee "$OUT/pytest.log" | tail -25 ;;
    train)
        # the first GPU training runs: digits with and without CUDA graphs (time per epoch,
        # accuracy), then MNIST when .gpu-data/mnist.npz travelled with the call
        step train
        for g in "" "--no-cuda-graph"; do
            l=$(left "$((T_TRAIN / 3))"); [ "$l" -le 15 ] && { echo "train: no time left"; break; }
            name=train-digits${g:+-nograph}
            echo "== $name" >> "$OUT/train.log"
            timeout "$l" $PY -m bss2_backend train --device cuda --epochs 5 --json --no-progress \
                $g --out "/tmp/bss2-train/$name" > "$OUT/$name.json" 2>> "$OUT/train.log" \
                || echo "train digits $g: exit $?"
        done
        if [ -f .gpu-data/mnist.npz ]; then
            l=$(left "$((T_TRAIN / 3))")
            echo "== train-mnist" >> "$OUT/train.log"
            [ "$l" -gt 20 ] && { timeout "$l" $PY -m bss2_backend train --device cuda \
                --data .gpu-data/mnist.npz --epochs 3 --json --no-progress \
                --out /tmp/bss2-train/mnist > "$OUT/train-mnist.json" 2>> "$OUT/train.log" \
                || echo "train mnist: exit $?"; }
        fi
        grep -E "epoch|CUDA graphs|Error" "$OUT/train.log" | tail -20 ;;
    profile)
        step profile
        l=$(left "$T_PROFILE"); [ "$l" -le 15 ] && { echo "profile: no time left"; continue; }
        timeout "$l" $PY -m bss2_backend.bench.profile --workloads A B \
            --impls "bss2.ideal[triton]" "bss2.chip[triton]" --modes fwd fwd+bwd \
            --iters 20 --rows 30 > "$OUT/profile.log" 2>&1
        tail -12 "$OUT/profile.log" ;;
    *) echo "unknown step $s (bench | tests | train | profile)"; exit 2 ;;
    esac
done
step done
