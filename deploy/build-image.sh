#!/usr/bin/env bash
# Builds the skiff image offline with podman (deploy/Containerfile):
# a static skiff binary (glibc, crt-static), and the host's iptables tools
# with their shared libraries, for `skiff iptables` in the init container.
# Prints the image's size. IMAGE names it (default localhost/skiff:latest);
# SKIP_BUILD=1 reuses the last static build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IMAGE=${IMAGE:-localhost/skiff:latest}
TARGET=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${STATIC_TARGET_DIR:-$HOME/.cache/skiff/static}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p skiff --target "$TARGET"
fi
bin="$CARGO_TARGET_DIR/$TARGET/release/skiff"
# A static(-pie) binary names no shared library.
if ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "build-image: $bin is not static" >&2
    exit 1
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/sbin" "$root/tmp" "$root/etc"
# Stripped: debug info is for developers, not for every pod.
install -s -m 0755 "$bin" "$root/skiff"
# The iptables tools: multi-call binaries, named by the links made below.
for multi in xtables-nft-multi xtables-legacy-multi; do
    src=$(command -v "$multi")
    install -m 0755 "$src" "$root/usr/sbin/$multi"
    for lib in $(ldd "$src" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
# The extensions the rules use (tcp, owner, REDIRECT...), loaded at run time.
xt=$(dirname "$(ldd "$(command -v xtables-nft-multi)" | awk '/libxtables/ {print $3}')")/xtables
# Put where the Containerfile's XTABLES_LIBDIR says (the host may find them
# through a /lib -> /usr/lib link the image does not have).
mkdir -p "$root/usr/lib/xtables" && cp -L "$xt"/*.so "$root/usr/lib/xtables/"
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s xtables-nft-multi "$root/usr/sbin/$tool"
    ln -s xtables-nft-multi "$root/usr/sbin/${tool/tables/tables-nft}"
    ln -s xtables-legacy-multi "$root/usr/sbin/${tool/tables/tables-legacy}"
done
echo "skiff:x:1337:1337::/:/skiff" > "$root/etc/passwd"
cp deploy/Containerfile "$ctx/Containerfile"
podman build -q -t "$IMAGE" -f "$ctx/Containerfile" "$ctx" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
printf "build-image: %s, %s bytes (%s MiB); the skiff binary, stripped, %s bytes\n" \
    "$IMAGE" "$size" "$((size / 1048576))" "$(stat -c %s "$root/skiff")"
