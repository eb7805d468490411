#!/usr/bin/env bash
# cross/check.sh: prove that the binaries cross/build.sh wrote are static and work.
#
#   cross/build.sh x86_64-unknown-linux-musl aarch64-unknown-linux-musl && cross/check.sh
#
# 1. SHA256SUMS matches cross/out.
# 2. Every binary in cross/out/<target>/ is a static ELF of the right machine: no program
#    interpreter (no PT_INTERP), no shared library (no DT_NEEDED); the agent is <= 10 MiB.
# 3. End to end on loopback, with a real x86_64 hub (tether-hub init/serve, tetherctl):
#    a. the aarch64 agent runs under qemu-aarch64-static, dials the hub as `localhost:PORT`
#       (name resolution by the static musl binary, no glibc NSS), joins with an auto-approve
#       token, and the hub reports it Ready with facts.arch = aarch64;
#    b. the hub sends it a work (`tetherctl apply -f`, one ConfigMap) and it reports the work
#       Applied; its `--executor dir:PATH` wrote the manifest;
#    c. the x86_64 agent runs chrooted in an empty root filesystem that holds only the binary,
#       its data directory and /etc/hosts, dials `hub.tether.test:PORT`, a name that only that
#       /etc/hosts knows, and the hub reports it Ready.
#    d. if an armv7 build is present, the armv7 agent joins under qemu-arm-static too.
#
# Needs root (chroot) or unprivileged user namespaces (unshare -r). Installs qemu-user-static,
# file and binutils with apt-get when missing. Environment: CROSS_OUT (default cross/out),
# CHECK_TIMEOUT (seconds per wait, default 120), CHECK_KEEP=1 keeps the work directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${CROSS_OUT:-$ROOT/cross/out}
TIMEOUT=${CHECK_TIMEOUT:-120}
X86=$OUT/x86_64-unknown-linux-musl
ARM64=$OUT/aarch64-unknown-linux-musl
ARMV7=$OUT/armv7-unknown-linux-musleabihf
MAX_AGENT_BYTES=$((10 * 1024 * 1024))
START=$SECONDS
export NO_COLOR=1 # plain agent and hub logs in the work directory

step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - START))"; }
ok() { printf 'ok   %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*" >&2
  FAILED=1
}
die() {
  printf 'cross/check.sh: %s\n' "$*" >&2
  dump_logs
  exit 1
}
FAILED=0
W=""
PIDS=()

dump_logs() {
  [ -n "$W" ] || return 0
  for f in "$W"/*.log; do
    [ -f "$f" ] || continue
    printf -- '--- last lines of %s\n' "${f##*/}" >&2
    tail -n 25 "$f" >&2
  done
}

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$W" ] && [ "${CHECK_KEEP:-0}" != 1 ]; then rm -rf "$W"; fi
  [ -z "$W" ] || [ "${CHECK_KEEP:-0}" != 1 ] || echo "work directory kept: $W"
}
trap cleanup EXIT

# --- tools -----------------------------------------------------------------------------------
missing=()
command -v file >/dev/null || missing+=(file)
command -v readelf >/dev/null || missing+=(binutils)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi
command -v python3 >/dev/null || die "python3 is needed (JSON and free ports)"

# CHECK_HUB_DIR (CI): take tether-hub and tetherctl from a host build (e.g. target/debug)
# instead of the static x86_64 ones; the empty-rootfs step then needs an x86_64 static agent
# and is skipped without one.
HUBDIR=${CHECK_HUB_DIR:-$X86}
[ -x "$HUBDIR/tether-hub" ] && [ -x "$HUBDIR/tetherctl" ] ||
  die "no tether-hub/tetherctl in $HUBDIR: run cross/build.sh x86_64-unknown-linux-musl aarch64-unknown-linux-musl (or set CHECK_HUB_DIR)"
[ -n "${CHECK_HUB_DIR:-}" ] || [ -x "$X86/tether-agent" ] ||
  die "no x86_64 agent in $X86: run cross/build.sh x86_64-unknown-linux-musl"
[ -x "$ARM64/tether-agent" ] || die "no aarch64 agent in $ARM64: run cross/build.sh aarch64-unknown-linux-musl"

# --- 1. checksums --------------------------------------------------------------------------------
step "SHA256SUMS"
(cd "$OUT" && sha256sum --quiet -c SHA256SUMS) && ok "all files match $OUT/SHA256SUMS" ||
  fail "SHA256SUMS does not match (rebuilt without cross/build.sh?)"

# --- 2. static ELF ---------------------------------------------------------------------------------
step "static linking"
expect_machine() { # TARGET -> substring of `file` output
  case "$1" in
    x86_64-*) echo "x86-64" ;;
    aarch64-*) echo "ARM aarch64" ;;
    armv7-*) echo "ARM, EABI5" ;;
    *) echo "" ;;
  esac
}
printf '%-32s %-13s %10s  %s\n' TARGET BINARY BYTES 'file(1)' 
for dir in "$OUT"/*/; do
  t=$(basename "$dir")
  [ "$t" = empty-data ] && continue
  for bin in "$dir"*; do
    [ -f "$bin" ] && [ -x "$bin" ] || continue
    b=$(basename "$bin")
    desc=$(file -b "$bin")
    size=$(stat -c %s "$bin")
    printf '%-32s %-13s %10s  %s\n' "$t" "$b" "$size" "$(tr ',' '\n' <<<"$desc" | sed -n '2p;/static/p' | tr -d '\n')"
    if readelf -lW "$bin" | grep -q 'INTERP'; then fail "$t/$b has a program interpreter (PT_INTERP)"; fi
    if readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then fail "$t/$b needs shared libraries"; fi
    case "$desc" in
      *"statically linked"* | *"static-pie linked"*) ;;
      *) fail "$t/$b: file(1) does not say statically linked: $desc" ;;
    esac
    m=$(expect_machine "$t")
    [ -z "$m" ] || grep -qF "$m" <<<"$desc" || fail "$t/$b is not a $m binary: $desc"
    if [ "$b" = tether-agent ] && [ "$size" -gt "$MAX_AGENT_BYTES" ]; then
      fail "$t/tether-agent is $size bytes, over the 10 MiB budget"
    fi
  done
done
[ "$FAILED" = 0 ] && ok "no PT_INTERP, no DT_NEEDED, agents <= 10 MiB"

# --- 3. end to end -------------------------------------------------------------------------------
W=$(mktemp -d /tmp/tether-cross-check.XXXXXX)
free_port() { # udp|tcp
  python3 - "$1" <<'PY'
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}
QPORT=$(free_port udp)
APORT=$(free_port tcp)
export TETHER_CONFIG=$W/hub/tetherctl.yaml
ctl() { "$HUBDIR/tetherctl" "$@"; }

# Poll the hub until cluster NAME is Ready with facts.arch = ARCH; print its JSON view.
wait_ready() { # NAME ARCH AGENT_PID
  local name=$1 arch=$2 pid=$3 deadline=$((SECONDS + TIMEOUT)) view=""
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$pid" 2>/dev/null || die "agent $name exited before it was Ready"
    if view=$(ctl -o json clusters get "$name" 2>/dev/null) &&
      python3 -c '
import json, sys
v = json.loads(sys.argv[1])
sys.exit(0 if v["state"] == "Ready" and v["facts"]["arch"] == sys.argv[2] else 1)' "$view" "$arch"; then
      python3 -c '
import json, sys
v = json.loads(sys.argv[1])
f = v["facts"]
print("ok   cluster %s: state=%s connected=%s arch=%s os=%s agent=%s cpus=%s cert_serial=%s..."
      % (v["name"], v["state"], v["connected"], f["arch"], f["os"], f["agent_version"],
         f["cpus"], v["cert_serial"][:16]))' "$view"
      return 0
    fi
    sleep 1
  done
  die "cluster $name not Ready after ${TIMEOUT}s (last view: ${view:-none})"
}

# The hub sends a work to cluster NAME and the agent reports it Applied: `tetherctl apply -f`
# a Work with one ConfigMap, poll `tetherctl describe work` until the cluster's applied
# generation is the work's and its phase is Applied, then look at what the agent's
# dir:PATH executor wrote.
check_work() { # NAME AGENT_PID EXECUTOR_DIR
  local name=$1 pid=$2 dir=$3 work=cross-check deadline=$((SECONDS + TIMEOUT)) view=""
  cat >"$W/work.yaml" <<YAML
apiVersion: tether.dev/v1alpha1
kind: Work
metadata:
  name: $work
spec:
  targets:
    clusters: [$name]
  manifests:
    - apiVersion: v1
      kind: ConfigMap
      metadata: {name: $work, namespace: default}
      data: {built-for: aarch64-unknown-linux-musl}
YAML
  ctl apply -f "$W/work.yaml"
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$pid" 2>/dev/null || die "agent $name exited before the work was Applied"
    if view=$(ctl -o json describe work "$work" 2>/dev/null) &&
      python3 -c '
import json, sys
d = json.loads(sys.argv[1])
gen = d["summary"]["generation"]
c = [c for c in d["clusters"] if c["cluster"] == sys.argv[2]]
sys.exit(0 if c and c[0]["applied_generation"] == gen and c[0]["phase"] == "Applied" else 1)' "$view" "$name"; then
      ctl describe work "$work" | sed 's/^/     /'
      local f
      # The dir executor quotes every string (YAML 1.1 readers must not retype values).
      f=$(grep -lE "name: \"?$work\"?\$" "$dir"/* 2>/dev/null | head -n 1)
      [ -n "$f" ] || die "work Applied but no manifest in the executor directory $dir"
      ok "work $work Applied on $name; the agent wrote ${f#"$W"/}"
      return 0
    fi
    sleep 1
  done
  die "work $work not Applied on $name after ${TIMEOUT}s (last view: ${view:-none})"
}

step "hub: tether-hub init + serve on udp/127.0.0.1:$QPORT ($HUBDIR)"
"$HUBDIR/tether-hub" init --data-dir "$W/hub" --hub-name localhost --san hub.tether.test \
  --admin-listen "127.0.0.1:$APORT" >"$W/init.txt"
FP=$(awk '/CA fingerprint/ {getline; print $1; exit}' "$W/init.txt")
[ -n "$FP" ] || die "no CA fingerprint in tether-hub init output: $(cat "$W/init.txt")"
"$HUBDIR/tether-hub" serve --data-dir "$W/hub" --listen "127.0.0.1:$QPORT" \
  --admin-listen "127.0.0.1:$APORT" --heartbeat-interval 1s >"$W/hub.log" 2>&1 &
HUB=$!
PIDS+=("$HUB")
deadline=$((SECONDS + TIMEOUT))
until ctl clusters list >/dev/null 2>&1; do
  kill -0 "$HUB" 2>/dev/null || die "hub exited"
  [ $SECONDS -lt $deadline ] || die "hub admin API not up after ${TIMEOUT}s"
  sleep 0.2
done
ok "hub up, CA ${FP:0:16}..."
TOKEN=$(ctl token create --auto-approve --uses 3 --ttl 15m 2>/dev/null)
[ -n "$TOKEN" ] || die "no token"
ok "auto-approve token created"

step "aarch64 agent under qemu-aarch64-static, --hub localhost:$QPORT"
qemu-aarch64-static "$ARM64/tether-agent" run --data-dir "$W/arm64-data" \
  --hub "localhost:$QPORT" --token "$TOKEN" --ca-sha256 "$FP" --name qemu-aarch64 \
  --backoff-cap 2s --executor "dir:$W/arm64-manifests" >"$W/agent-aarch64.log" 2>&1 &
ARM_PID=$!
PIDS+=("$ARM_PID")
wait_ready qemu-aarch64 aarch64 "$ARM_PID"
sed -n 's/^/     agent: /p' "$W/agent-aarch64.log" | head -n 6

step "aarch64 agent: a work through the hub, reported Applied"
check_work qemu-aarch64 "$ARM_PID" "$W/arm64-manifests"

if [ -x "$X86/tether-agent" ]; then
step "x86_64 agent in an empty root filesystem, --hub hub.tether.test:$QPORT"
R=$W/rootfs
mkdir -p "$R/data" "$R/etc"
install -m 0755 "$X86/tether-agent" "$R/tether-agent"
printf '127.0.0.1 hub.tether.test\n' >"$R/etc/hosts"
echo "rootfs contents:"
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | sed 's/^/     /')
if getent hosts hub.tether.test >/dev/null 2>&1; then
  echo "note: hub.tether.test also resolves outside the rootfs; the name check proves less"
else
  ok "hub.tether.test does not resolve outside the rootfs: only its /etc/hosts can answer"
fi
if [ "$(id -u)" = 0 ]; then chroot_cmd=(chroot "$R"); else chroot_cmd=(unshare -r chroot "$R"); fi
"${chroot_cmd[@]}" /tether-agent run --data-dir /data --hub "hub.tether.test:$QPORT" \
  --token "$TOKEN" --ca-sha256 "$FP" --name rootfs-x86-64 --backoff-cap 2s --executor memory \
  >"$W/agent-x86_64-rootfs.log" 2>&1 &
X86_PID=$!
PIDS+=("$X86_PID")
wait_ready rootfs-x86-64 x86_64 "$X86_PID"
else
  step "x86_64 empty-rootfs step skipped: no static x86_64 agent in $X86 (CI builds aarch64 only)"
fi

if [ -x "$ARMV7/tether-agent" ] && command -v qemu-arm-static >/dev/null; then
  step "armv7 agent under qemu-arm-static, --hub localhost:$QPORT"
  qemu-arm-static "$ARMV7/tether-agent" run --data-dir "$W/armv7-data" \
    --hub "localhost:$QPORT" --token "$TOKEN" --ca-sha256 "$FP" --name qemu-armv7 \
    --backoff-cap 2s --executor memory >"$W/agent-armv7.log" 2>&1 &
  V7_PID=$!
  PIDS+=("$V7_PID")
  wait_ready qemu-armv7 arm "$V7_PID"
fi

step "hub's view"
ctl clusters list

[ "$FAILED" = 0 ] || die "some checks failed (see FAIL lines above)"
step "all checks passed"
