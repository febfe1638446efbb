#!/usr/bin/env bash
# skiff control push benchmark: time from a change in the served directory
# until every connected ADS client has ACKed it (p50, p99, max over clients
# and rounds), with 1, 100 and 1000 clients, and the server's resident memory
# per connected client. The server runs in its own process; the simulated
# clients (one HTTP/2 connection each, as a proxy opens) in this one.
#
#   bash bench/control.sh                          # 1,100,1000 clients; 20 rounds each
#   bash bench/control.sh --clients 1000 --rounds 5
#   bash bench/control.sh --sotw                   # state-of-the-world streams
#   SKIP_BUILD=1 bash bench/control.sh             # reuse the release build
exec bash "$(dirname "${BASH_SOURCE[0]}")/release-bin.sh" skiff-control-push "$@"
