#!/usr/bin/env bash
# Skiff reload benchmark: time from a config file change to the first
# request the new config serves (median and p99 over 50 changes), and
# throughput and latency under closed-loop load with no change against 10
# changes a second. One process (bench/chaos, binary skiff-reload): the
# upstream, Skiff in-process with its file watcher, and the clients share one
# tokio runtime with 2 worker threads, on loopback.
#
#   bash bench/reload.sh                  # 50 changes; 8 connections, 5 s per load run
#   bash bench/reload.sh --changes 10 --secs 1     # smoke run
#   SKIP_BUILD=1 bash bench/reload.sh     # reuse the release build
exec bash "$(dirname "${BASH_SOURCE[0]}")/release-bin.sh" skiff-reload "$@"
