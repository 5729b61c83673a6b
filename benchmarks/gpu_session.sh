#!/usr/bin/env bash
# What a session lent a GPU should measure, in calls that fit its device time (15 minutes,
# start-up included, at most 10 minutes a call): the CUDA-graph step's checks, the search
# epochs replayed as CUDA graphs (with the native and the var_mean narrow BatchNorm), the
# official DARTS and PC-DARTS steps beside ours (where their code was carried along), five
# seeds at once, the narrow BatchNorm per call, and the eager epochs.
# Every part has its own timeout and writes under $OUT (default: ./gpu-out), so a part that
# hangs or fails leaves the others' results. PARTS picks parts by name (default: all); parts
# run in this file's order, which is their priority.
#
#   PYTHONPATH=src bash benchmarks/gpu_session.sh                  # on the GPU machine, all parts
#   QUICK=1 PYTHONPATH=src bash benchmarks/gpu_session.sh          # a dry run on a CPU (1 step an epoch)
#
# All parts take more than one session's device time (estimated; never run whole), so split
# them over calls of at most 10 minutes, by priority:
#   PARTS="graph-tests epochs-graphs epochs-graphs-bn" PYTHONPATH=src bash benchmarks/gpu_session.sh
#   PARTS="peers-step seeds narrow-bn" PYTHONPATH=src bash benchmarks/gpu_session.sh   # carry: ["peers"]
#   PARTS="epochs-eager darts-step" PYTHONPATH=src bash benchmarks/gpu_session.sh       # if time is left
#
# peers-step runs only where the official code lies under peers/darts and peers/pcdarts
# (model_search.py, operations.py, genotypes.py of each): /peers/ is ignored by git, so it
# travels to the GPU machine only as `carry: ["peers"]` and is never committed.
# Record the printed tables in benchmarks/RESULTS.md with the device, torch version and date.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
steps=()
[ -n "${QUICK:-}" ] && steps=(--steps 1 --batch 8)

want() {  # want NAME: whether PARTS (default: every part) names it
    [ -z "${PARTS:-}" ] || [[ " $PARTS " == *" $1 "* ]]
}

part() {  # part NAME SECONDS COMMAND...: one step of the session, its output in $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    want "$name" || return 0
    echo "== $name (at most ${limit}s)"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.txt"
    echo "== $name: exit $rc"
}

python3 -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" \
    > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
# The replayed step against the eager one on the real backend (skipped without CUDA).
part graph-tests 120 python3 -m pytest -q -x tests/test_graphstep.py
# EnTranNAS and DST at the paper's batch 512, replayed as CUDA graphs: the 3- and 4-minute
# targets; then the same with the narrow BatchNorm as reductions (run.narrow_bn=var_mean).
if [ -z "${QUICK:-}" ]; then
    part epochs-graphs 240 python3 benchmarks/search_epoch.py --methods entrannas dst --cuda-graphs \
        --epochs 3 --json "$OUT/epochs-graphs.json"
    part epochs-graphs-bn 200 python3 benchmarks/search_epoch.py --methods entrannas dst --cuda-graphs \
        --narrow-bn var_mean --epochs 3 --json "$OUT/epochs-graphs-bn.json"
fi
# fp32, batch 64, each in its own process: the official DARTS and PC-DARTS, DARTS mode, EnTranNAS.
if [ -f peers/darts/model_search.py ] && [ -f peers/pcdarts/model_search.py ]; then
    if [ -n "${QUICK:-}" ]; then
        peer_args=(--batch 8 --steps 1 --warmup 0)
    else
        peer_args=(--batch 64 --steps 10 --warmup 3 --device cuda)
    fi
    part peers-step 200 python3 benchmarks/search_step.py "${peer_args[@]}" --configs darts bottleneck \
        --peers peers --json "$OUT/peers.json"
fi
# One EnTranNAS search against five at once on the same GPU (2 epochs, synthetic CIFAR-10 shape).
if [ -n "${QUICK:-}" ]; then
    part seeds 120 python3 benchmarks/seeds_at_once.py --seeds 2 --epochs 1 --set data.limit=96 \
        --set data.eval_limit=64 --set model.C=4 --set model.layers=3 --set optim.batch_size=16 --json "$OUT/seeds.json"
else
    part seeds 330 python3 benchmarks/seeds_at_once.py --json "$OUT/seeds.json"
fi
# The narrow-channel BatchNorm per call: native against two reduction forms (same numbers,
# printed), on the search's bf16 channels_last maps.
part narrow-bn 60 python3 benchmarks/narrow_bn.py --bf16-channels-last ${QUICK:+--shape 64 4 32 32 --repeat 5}
# The same epochs eagerly (what the graphs save), and DARTS mode at batch 64.
part epochs-eager 180 python3 benchmarks/search_epoch.py --methods entrannas dst "${steps[@]}" \
    --json "$OUT/epochs-eager.json"
if [ -z "${QUICK:-}" ]; then
    part darts-step 120 python3 benchmarks/search_epoch.py --methods darts --steps 40 \
        --json "$OUT/darts.json"
fi
echo "results in $OUT"
