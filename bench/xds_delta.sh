#!/usr/bin/env bash
# Control-feed delta benchmark: a proxy holding N host routes and N EDS
# clusters from a delta xDS stream, timed applying a change to one
# cluster's endpoints (to its ACK, and until a request is served by the new
# endpoint). See bench/chaos/src/bin/skiff-xds-delta.rs.
#
#   bash bench/xds_delta.sh                      # 10,000 services, 50 changes
#   bash bench/xds_delta.sh --services 1000 --rounds 20
#   SKIP_BUILD=1 bash bench/xds_delta.sh         # reuse the release build
exec bash "$(dirname "${BASH_SOURCE[0]}")/release-bin.sh" skiff-xds-delta "$@"
