#!/usr/bin/env bash
# cross/build.sh [TARGET...]: fully static tether-agent, tether-hub and tetherctl for edge targets.
#
#   cross/build.sh                                  # the three targets below
#   cross/build.sh aarch64-unknown-linux-musl       # one target
#
# Output: cross/out/<target>/{tether-agent,tether-hub,tetherctl}, a CycloneDX SBOM next to each
# (<binary>.cdx.json), and cross/out/SHA256SUMS over all of them (paths relative to cross/out).
# The agent uses the size-optimised `release-agent` profile (root Cargo.toml); the hub and
# tetherctl use `release` with symbols stripped.
#
# Installs what it needs when missing, without asking: rustup targets, cargo-zigbuild with Zig
# (the C compiler and linker for ring and other C code, and the musl libc) from PyPI, and
# cargo-cyclonedx (the SBOMs) from crates.io.
# Where rustup has no prebuilt standard library for a target (seen for
# armv7-unknown-linux-musleabihf on our machines: the download answers 404), std is built from
# the rust-src component with -Zbuild-std; on a stable toolchain that needs RUSTC_BOOTSTRAP=1,
# set for that one cargo invocation only. docs/cross.md has the details and the measurements.
#
# Environment: CARGO_TARGET_DIR (default: target/ of the workspace), CROSS_OUT (default:
# cross/out), CROSS_JOBS (cargo -j), CROSS_NICE (nice level, default 10), CROSS_LOCKED=0 to build
# without --locked (a Cargo.lock being edited by hand).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${CROSS_OUT:-$ROOT/cross/out}
DEFAULT_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${DEFAULT_TARGETS[@]}")
# Versions the measurements in docs/cross.md were made with.
ZIGLANG_VERSION=${ZIGLANG_VERSION:-0.17.1}
CARGO_ZIGBUILD_VERSION=${CARGO_ZIGBUILD_VERSION:-0.24.0}
CARGO_CYCLONEDX_VERSION=${CARGO_CYCLONEDX_VERSION:-0.5.9}

log() { printf '== %s (%ss)\n' "$*" "$SECONDS" >&2; }
die() { printf 'cross/build.sh: %s\n' "$*" >&2; exit 1; }

for t in "${TARGETS[@]}"; do
  case "$t" in
    *-linux-musl | *-linux-musleabi | *-linux-musleabihf) ;;
    *) die "$t: only *-linux-musl* targets give a static binary without glibc NSS" ;;
  esac
done

command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
command -v rustup >/dev/null || die "rustup not found: the targets are added with rustup"

# --- tools -----------------------------------------------------------------------------------
if ! command -v cargo-zigbuild >/dev/null || ! python3 -m ziglang version >/dev/null 2>&1; then
  log "installing ziglang==$ZIGLANG_VERSION cargo-zigbuild==$CARGO_ZIGBUILD_VERSION (pip)"
  python3 -m pip install --quiet --disable-pip-version-check \
    "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
  hash -r
  # pyenv puts new console scripts behind shims that exist only after a rehash.
  command -v pyenv >/dev/null && pyenv rehash 2>/dev/null || true
fi
command -v cargo-zigbuild >/dev/null || die "cargo-zigbuild is not on PATH after pip install"
if ! command -v cargo-cyclonedx >/dev/null; then
  log "installing cargo-cyclonedx $CARGO_CYCLONEDX_VERSION (cargo install)"
  nice -n "${CROSS_NICE:-10}" cargo install --quiet --locked cargo-cyclonedx --version "$CARGO_CYCLONEDX_VERSION"
fi

# --- targets: prebuilt std from rustup, else build std from rust-src ----------------------------
declare -A BUILD_STD=()
installed=$(rustup target list --installed)
for t in "${TARGETS[@]}"; do
  grep -qx "$t" <<<"$installed" && continue
  log "rustup target add $t"
  err=$(mktemp)
  if ! rustup target add "$t" >/dev/null 2>"$err"; then
    grep -m1 -i 'error' "$err" | sed 's/^/  rustup: /' >&2 || true
    log "no prebuilt std for $t: building std from rust-src (-Zbuild-std)"
    rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src >/dev/null
    BUILD_STD[$t]=1
  fi
  rm -f "$err"
done

# --- build ---------------------------------------------------------------------------------------
locked=(--locked)
[ "${CROSS_LOCKED:-1}" = 0 ] && locked=()
jobs=()
[ -n "${CROSS_JOBS:-}" ] && jobs=(-j "$CROSS_JOBS")
TDIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TDIR

zigbuild() { # TARGET ARGS...
  local t=$1
  shift
  # mimalloc (the musl builds' allocator) commits its arenas up front where Linux overcommits:
  # 29 MiB resident for an idle agent instead of 8 (docs/cross.md). Commit on demand instead.
  local cflags
  cflags=CFLAGS_${t//-/_}
  export "$cflags=${!cflags:-} -DMI_DEFAULT_ARENA_EAGER_COMMIT=0"
  if [ -n "${BUILD_STD[$t]:-}" ]; then
    # No prebuilt std means no self-contained crt1.o/libc.a from rustup either: let Zig supply
    # musl's startup files and libc (link-self-contained=no), as it does for C programs.
    local var
    var=CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$t")_RUSTFLAGS
    env "$var=${!var:-} -C link-self-contained=no" RUSTC_BOOTSTRAP=1 nice -n "${CROSS_NICE:-10}" cargo zigbuild "${locked[@]}" "${jobs[@]}" \
      -Zbuild-std=std,panic_abort --target "$t" "$@"
  else
    nice -n "${CROSS_NICE:-10}" cargo zigbuild "${locked[@]}" "${jobs[@]}" --target "$t" "$@"
  fi
}

# A CycloneDX SBOM for each binary named, built for TARGET in this run, from Cargo.lock and the
# target's dependency graph (build-only dependencies left out). cargo-cyclonedx writes
# <member>/<bin>_bin.cdx.json for every binary of the workspace into the source tree; the named
# ones move next to their binary, the rest (the simulator's, binaries not built this time) are
# removed, so the tree stays clean and no SBOM describes an older binary.
sbom() { # TARGET BINARY...
  local t=$1 f bin
  shift
  cargo cyclonedx -q --manifest-path "$ROOT/Cargo.toml" --target "$t" --describe binaries \
    --format json --spec-version 1.5 --no-build-deps
  for f in "$ROOT"/*/*_bin.cdx.json; do
    [ -e "$f" ] || continue
    bin=$(basename "$f" _bin.cdx.json)
    if [[ " $* " == *" $bin "* ]]; then
      mv "$f" "$OUT/$t/$bin.cdx.json"
    else
      rm -f "$f"
    fi
  done
}

# An empty directory that Containerfile.hub copies to /data with the hub's uid.
mkdir -p "$OUT/empty-data"
for t in "${TARGETS[@]}"; do
  log "$t: tether-agent (profile release-agent)"
  zigbuild "$t" --profile release-agent -p tether-agent --bin tether-agent
  mkdir -p "$OUT/$t"
  install -m 0755 "$TDIR/$t/release-agent/tether-agent" "$OUT/$t/tether-agent"
  built=(tether-agent)
  # CROSS_BINS=agent (CI): the agent only; the check then runs a host-built hub.
  if [ "${CROSS_BINS:-all}" != agent ]; then
    log "$t: tether-hub, tetherctl (profile release, stripped)"
    CARGO_PROFILE_RELEASE_STRIP=symbols zigbuild "$t" --release -p tether-hub --bin tether-hub --bin tetherctl
    install -m 0755 "$TDIR/$t/release/tether-hub" "$OUT/$t/tether-hub"
    install -m 0755 "$TDIR/$t/release/tetherctl" "$OUT/$t/tetherctl"
    built+=(tether-hub tetherctl)
  fi
  log "$t: SBOMs (CycloneDX 1.5): ${built[*]}"
  sbom "$t" "${built[@]}"
done

# --- checksums over everything in cross/out (earlier runs' targets included) -------------------
(
  cd "$OUT"
  find . -mindepth 2 -maxdepth 2 -type f \( -perm -u+x -o -name '*.cdx.json' \) | sed 's|^\./||' | LC_ALL=C sort |
    xargs -r sha256sum >SHA256SUMS
)
log "done"
printf '%-36s %-14s %12s\n' TARGET BINARY BYTES
for t in "${TARGETS[@]}"; do
  for b in tether-agent tether-hub tetherctl; do
    [ -f "$OUT/$t/$b" ] || continue
    printf '%-36s %-14s %12s\n' "$t" "$b" "$(stat -c %s "$OUT/$t/$b")"
  done
done
echo "SBOMs: $OUT/<target>/<binary>.cdx.json"
echo "checksums: $OUT/SHA256SUMS"
