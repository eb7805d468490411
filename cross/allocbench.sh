#!/usr/bin/env bash
# cross/allocbench.sh [TARGET] [OPS_PER_THREAD] [THREADS...]: build cross/allocbench with musl's
# malloc, mimalloc and jemalloc for TARGET (default x86_64-unknown-linux-musl) and run each
# (under qemu-<arch>-static when TARGET is not x86_64). Numbers for docs/cross.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
T=${1:-x86_64-unknown-linux-musl}
shift || true
OPS=${1:-2000000}
shift || true
THREADS=("$@")
[ ${#THREADS[@]} -gt 0 ] || THREADS=(1 2 4 8)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HERE/allocbench/target}
case "$T" in
  x86_64-*) run=() ;;
  aarch64-*) run=(qemu-aarch64-static) ;;
  armv7-*) run=(qemu-arm-static) ;;
  *) echo "unknown target $T" >&2; exit 2 ;;
esac
# Same C flags as cross/build.sh (mimalloc commits arena memory on demand).
cflags=CFLAGS_${T//-/_}
export "$cflags=${!cflags:-} -DMI_DEFAULT_ARENA_EAGER_COMMIT=0"
for feat in "" mimalloc jemalloc; do
  name=${feat:-musl-malloc}
  (cd "$HERE/allocbench" && nice -n "${CROSS_NICE:-10}" cargo zigbuild --quiet --release --target "$T" \
    ${feat:+--features "$feat"})
  bin=$CARGO_TARGET_DIR/$T/release/tether-allocbench
  cp "$bin" "$CARGO_TARGET_DIR/allocbench-$T-$name"
  echo "# $T $name: $(stat -c %s "$bin") bytes"
  "${run[@]}" "$CARGO_TARGET_DIR/allocbench-$T-$name" "$OPS" "${THREADS[@]}"
done
