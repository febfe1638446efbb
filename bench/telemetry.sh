#!/usr/bin/env bash
# Skiff telemetry benchmark: throughput and p99 with metrics, a JSON access
# log to a file and tracing at 1% to a local OTLP receiver, against
# telemetry off, alternating in one process (bench/chaos, binary
# skiff-telemetry) on 2 worker threads.
#
#   bash bench/telemetry.sh                    # 10 rounds of each, 2 s each (medians)
#   bash bench/telemetry.sh --rounds 1 --secs 1   # smoke run
#   SKIP_BUILD=1 bash bench/telemetry.sh       # reuse the release build
exec bash "$(dirname "${BASH_SOURCE[0]}")/release-bin.sh" skiff-telemetry "$@"
