#!/usr/bin/env bash
# Builds one of bench/chaos's binaries in release (unless SKIP_BUILD=1) and
# runs it with the remaining arguments, from wherever cargo puts it
# (CARGO_TARGET_DIR and .cargo/config.toml are honoured).
#
#   bash bench/release-bin.sh skiff-reload --changes 10
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=$1
shift
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release -q -p skiff-chaos --bin "$bin"
fi
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "$target/release/$bin" "$@"
