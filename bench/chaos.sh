#!/usr/bin/env bash
# Skiff chaos benchmark: steady open-loop load through Skiff while one of
# three endpoints is killed and brought back on the same port. One process
# (bench/chaos, crate skiff-chaos): three backends, Skiff in-process and the
# load generator share one tokio runtime with 2 worker threads, all on
# loopback with ports picked by the kernel.
#
#   bash bench/chaos.sh                       # 1,000 req/s, 10 s per phase, updates docs/benchmarks.md
#   bash bench/chaos.sh --phase-secs 2        # smoke run
#   bash bench/chaos.sh --help                # every flag
#
# Knobs (environment; a flag given on the command line wins):
#   CHAOS_RATE=1000             requests per second (open loop)
#   CHAOS_PHASE_SECS=10         seconds of the healthy, down and recovered phases
#   CHAOS_RECOVERED_SECS=       seconds of the recovered phase, if different
#   CHAOS_WARMUP_SECS=2         unmeasured load first
#   CHAOS_KILL=busiest          1, 2, 3, or busiest (the endpoint with the most healthy-phase traffic)
#   UPDATE_DOCS=1               write the table into docs/benchmarks.md (the "Chaos" section);
#                               a smoke run (--phase-secs under 10) never does
#   SKIP_BUILD=1                do not run `cargo build --release -p skiff-chaos`
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

UPDATE_DOCS=${UPDATE_DOCS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}

if [[ $SKIP_BUILD != 1 ]]; then
    cargo build --release -p skiff-chaos
fi

# Only a full-length run belongs in the docs: look for a shorter phase in
# the flags or the environment.
phase=${CHAOS_PHASE_SECS:-10}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --phase-secs=*) phase=${args[i]#*=} ;;
        --phase-secs) phase=${args[i + 1]:-10} ;;
        -h | --help) UPDATE_DOCS=0 ;;
    esac
done
if awk -v p="$phase" 'BEGIN { exit !(p < 10) }'; then
    UPDATE_DOCS=0
fi

if [[ $UPDATE_DOCS == 1 ]]; then
    exec target/release/skiff-chaos --doc "$ROOT/docs/benchmarks.md" "$@"
else
    exec target/release/skiff-chaos "$@"
fi
