# Shared by simulations/ui/run.sh (browser test) and schemathesis.sh: a real hub from
# target/debug on loopback, its admin credential as PEM files, agents. Sourced, not run.
# Needs: BIN (directory of tether-hub, tetherctl, tether-agent), W (work directory).

export NO_COLOR=1 # plain logs in the work directory
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

die() {
  printf '%s: %s\n' "$0" "$*" >&2
  for f in "$W"/*.log; do
    [ -f "$f" ] || continue
    printf -- '--- last lines of %s\n' "${f##*/}" >&2
    tail -n 20 "$f" >&2
  done
  exit 1
}

free_port() { # udp|tcp
  python3 - "$1" <<'PY'
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}

ctl() { "$BIN/tetherctl" "$@"; }

# A tetherctl config -> PREFIX.crt, PREFIX.key, PREFIX-ca.crt (what browsers and curl take).
pem_files() { # CONFIG PREFIX
  python3 - "$1" "$2" <<'PY'
import os, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
for field, suffix in (("cert_pem", ".crt"), ("key_pem", ".key"), ("ca_pem", "-ca.crt")):
    path = sys.argv[2] + suffix
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, cfg[field].encode())
    os.close(fd)
PY
}

# Starts a hub; sets APORT, QPORT, FP, TETHER_CONFIG, HUB_URL and ADMIN (PEM prefix).
start_hub() {
  [ -x "$BIN/tether-hub" ] && [ -x "$BIN/tetherctl" ] || die "no tether-hub/tetherctl in $BIN (cargo build -p tether-hub --bins)"
  QPORT=$(free_port udp)
  APORT=$(free_port tcp)
  "$BIN/tether-hub" init --data-dir "$W/hub" --hub-name localhost \
    --admin-listen "127.0.0.1:$APORT" >"$W/init.txt" || die "tether-hub init failed"
  FP=$(awk '/CA fingerprint/ {getline; print $1; exit}' "$W/init.txt")
  [ -n "$FP" ] || die "no CA fingerprint in the output of tether-hub init"
  "$BIN/tether-hub" serve --data-dir "$W/hub" --listen "127.0.0.1:$QPORT" \
    --admin-listen "127.0.0.1:$APORT" --heartbeat-interval 1s >"$W/hub.log" 2>&1 &
  PIDS+=("$!")
  export TETHER_CONFIG=$W/hub/tetherctl.yaml
  local deadline=$((SECONDS + 60))
  until ctl clusters list >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "hub admin API not up after 60 s"
    sleep 0.2
  done
  ADMIN=$W/admin
  pem_files "$TETHER_CONFIG" "$ADMIN"
  # The serving certificate names the hub (--hub-name), not the address.
  HUB_URL=https://localhost:$APORT
}

start_agent() { # NAME TOKEN [--label k=v ...]
  local name=$1 token=$2
  shift 2
  "$BIN/tether-agent" run --data-dir "$W/agent-$name" --hub "127.0.0.1:$QPORT" \
    --token "$token" --ca-sha256 "$FP" --name "$name" --backoff-cap 1s \
    --executor memory "$@" >"$W/agent-$name.log" 2>&1 &
  PIDS+=("$!")
}

wait_for() { # SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "not within ${limit}s: $what"
    sleep 0.3
  done
}
