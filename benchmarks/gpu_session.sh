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
# A session's device time is 15 minutes, the machine's start (one to two minutes) included,
# and a call runs at most 10 minutes, so the parts come as one call whose timeouts add up to
# 570 s, by priority, then a short second call only if the first left time (the machine stays
# warm for 30 s after a call; a second start needs 4 minutes left). BUDGET (seconds) skips a
# part whose timeout would end past it, so a call never outruns its own timeout:
#   run: BUDGET=570 PARTS="graph-tests epochs-graphs peers-step seeds" PYTHONPATH=src \
#        bash benchmarks/gpu_session.sh          carry ["peers"], timeout_s 590
#   run: BUDGET=140 PARTS="narrow-bn epochs-graphs-bn" PYTHONPATH=src bash benchmarks/gpu_session.sh
#        timeout_s 150, only if that much is left; then give_back
# epochs-graphs times 2 epochs of EnTranNAS and DST replayed as CUDA graphs (the first pays for
# cuDNN autotuning and the captures, the second is the steady one the 50-epoch time comes
# from); if it fails, epochs-eager runs in its place, so the 3- and 4-minute figures come back
# either way (before peers-step and seeds, which BUDGET may then skip). seeds runs on 20,000
# synthetic images (19 steps of 512 an epoch) to fit.
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
    if [ -n "${BUDGET:-}" ] && (( SECONDS + limit > BUDGET )); then  # keep the call inside its timeout
        echo "== $name: skipped, ${limit}s would pass BUDGET=${BUDGET}s (${SECONDS}s spent)"
        return 0
    fi
    echo "== $name (at most ${limit}s)"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    last_rc=$rc
    tail -n 25 "$OUT/$name.txt"
    echo "== $name: exit $rc"
}
last_rc=0

python3 -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" \
    > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"
# The replayed step against the eager one on the real backend (skipped without CUDA).
part graph-tests 90 python3 -m pytest -q -x tests/test_graphstep.py
# EnTranNAS and DST at the paper's batch 512, replayed as CUDA graphs: the 3- and 4-minute
# targets; then the same with the narrow BatchNorm as reductions (run.narrow_bn=var_mean).
graphs_rc=0
if [ -z "${QUICK:-}" ]; then
    part epochs-graphs 180 python3 benchmarks/search_epoch.py --methods entrannas dst --cuda-graphs \
        --epochs 2 --json "$OUT/epochs-graphs.json"
    graphs_rc=$last_rc
fi
# The same epochs eagerly: in the first call only where the graphs failed (the 3- and 4-minute
# figures then come from here), else when PARTS names it (what the graphs save).
if [ -n "${PARTS:-}" ] && { [ "$graphs_rc" -ne 0 ] || [ -n "${QUICK:-}" ]; }; then
    PARTS="$PARTS epochs-eager"  # an empty PARTS (every part) has it already
fi
part epochs-eager 170 python3 benchmarks/search_epoch.py --methods entrannas dst "${steps[@]}" \
    --json "$OUT/epochs-eager.json"
# fp32, batch 64, each in its own process: the official DARTS and PC-DARTS, DARTS mode, EnTranNAS.
if [ -f peers/darts/model_search.py ] && [ -f peers/pcdarts/model_search.py ]; then
    if [ -n "${QUICK:-}" ]; then
        peer_args=(--batch 8 --steps 1 --warmup 0)
    else
        peer_args=(--batch 64 --steps 10 --warmup 3 --device cuda)
    fi
    part peers-step 150 python3 benchmarks/search_step.py "${peer_args[@]}" --configs darts bottleneck \
        --peers peers --json "$OUT/peers.json"
fi
# One EnTranNAS search against five at once on the same GPU (2 epochs, synthetic CIFAR-10 shape).
if [ -n "${QUICK:-}" ]; then
    part seeds 120 python3 benchmarks/seeds_at_once.py --seeds 2 --epochs 1 --set data.limit=96 \
        --set data.eval_limit=64 --set model.C=4 --set model.layers=3 --set optim.batch_size=16 --json "$OUT/seeds.json"
else
    part seeds 150 python3 benchmarks/seeds_at_once.py --set data.synthetic_size=20000 --json "$OUT/seeds.json"
fi
# The narrow-channel BatchNorm per call: native against two reduction forms (same numbers,
# printed), on the search's bf16 channels_last maps; then EnTranNAS's epochs with it.
part narrow-bn 40 python3 benchmarks/narrow_bn.py --bf16-channels-last ${QUICK:+--shape 64 4 32 32 --repeat 5}
if [ -z "${QUICK:-}" ]; then
    part epochs-graphs-bn 100 python3 benchmarks/search_epoch.py --methods entrannas --cuda-graphs \
        --narrow-bn var_mean --epochs 2 --json "$OUT/epochs-graphs-bn.json"
    part darts-step 120 python3 benchmarks/search_epoch.py --methods darts --steps 40 \
        --json "$OUT/darts.json"
fi
echo "results in $OUT"
