#!/usr/bin/env bash
# cross/agent-cost.sh AGENT [valgrind]: one agent run on loopback against the x86_64 hub from
# cross/out: join, session, one Work of 300 ConfigMaps applied with the dir: executor, shutdown.
# Prints callgrind's instruction count (valgrind) or the agent's VmHWM/VmRSS after Applied (plain),
# and with IDLE_S=N (plain) its VmRSS again after N more seconds of an idle session.
# HUB_DIR: where tether-hub and tetherctl are (default: the x86_64 static build in cross/out).
# The numbers in docs/cross.md (profile and allocator tables) come from this script.
set -euo pipefail
AGENT=$1; MODE=${2:-plain}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
X=${HUB_DIR:-${CROSS_OUT:-$ROOT/cross/out}/x86_64-unknown-linux-musl}
W=$(mktemp -d /tmp/cpu.XXXX)
Q=$(python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
A=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
export TETHER_CONFIG=$W/hub/tetherctl.yaml
$X/tether-hub init --data-dir $W/hub --hub-name localhost --admin-listen 127.0.0.1:$A > $W/init.txt 2>&1
FP=$(awk '/CA fingerprint/ {getline; print $1; exit}' $W/init.txt)
$X/tether-hub serve --data-dir $W/hub --listen 127.0.0.1:$Q --admin-listen 127.0.0.1:$A > $W/hub.log 2>&1 & HUB=$!
until $X/tetherctl clusters list >/dev/null 2>&1; do sleep 0.2; done
TOKEN=$($X/tetherctl token create --auto-approve 2>/dev/null)
pre=()
[ "$MODE" = valgrind ] && pre=(valgrind --tool=callgrind --callgrind-out-file=$W/cg.out)
"${pre[@]}" $AGENT run --data-dir $W/agent --hub localhost:$Q --token $TOKEN --ca-sha256 $FP --name m1 --executor dir:$W/out > $W/agent.log 2>&1 & AG=$!
until $X/tetherctl -o json clusters get m1 2>/dev/null | grep -q '"state": "Ready"'; do sleep 0.5; done
python3 - > $W/work.yaml <<'PY'
print("apiVersion: tether.dev/v1alpha1\nkind: Work\nmetadata: {name: big}\nspec:\n  targets: {clusters: [m1]}\n  manifests:")
for i in range(300):
    print(f"    - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: cm-{i}, namespace: default}}, data: {{k: value-{i}-" + "x"*200 + "}}")
PY
$X/tetherctl apply -f $W/work.yaml >/dev/null
until $X/tetherctl -o json describe work big 2>/dev/null | python3 -c 'import json,sys;d=json.load(sys.stdin);c=d["clusters"];sys.exit(0 if c and c[0]["applied_generation"]==1 and c[0]["phase"]=="Applied" else 1)'; do sleep 0.5; done
if [ "$MODE" = plain ]; then
  apid=$AG
  echo "VmHWM_kB=$(awk '/VmHWM/{print $2}' /proc/$apid/status) VmRSS_kB=$(awk '/VmRSS/{print $2}' /proc/$apid/status)"
  if [ -n "${IDLE_S:-}" ]; then
    sleep "$IDLE_S"
    echo "after ${IDLE_S}s idle: VmRSS_kB=$(awk '/VmRSS/{print $2}' /proc/$apid/status) VmHWM_kB=$(awk '/VmHWM/{print $2}' /proc/$apid/status)"
  fi
fi
kill -TERM $AG; wait $AG || true
kill -TERM $HUB; wait $HUB || true
[ "$MODE" = valgrind ] && echo "Ir=$(grep -m1 '^summary:' $W/cg.out | awk '{print $2}')"
rm -rf $W
