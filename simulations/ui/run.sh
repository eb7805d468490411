#!/usr/bin/env bash
# The dashboard in a real browser (Debian's Chromium, driven by playwright-core) against a real
# hub and real agents on loopback: dashboard.test.mjs says what is checked.
#
#   cargo build -p tether-hub -p tether-agent --bins
#   (cd simulations/ui && npm ci) && bash simulations/ui/run.sh
#
# Screenshots go to target/ui-screenshots/ (SHOTS); with UPDATE_DOCS_IMAGES=1 one of each page
# is also copied to docs/images/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/target/debug}
W=$(mktemp -d /tmp/tether-ui.XXXXXX)
export SHOTS=${SHOTS:-$ROOT/target/ui-screenshots}
mkdir -p "$SHOTS"
# shellcheck source=simulations/ui/lib.sh
source "$ROOT/simulations/ui/lib.sh"
trap 'cleanup; rm -rf "$W"' EXIT

[ -x /usr/bin/chromium ] || die "no /usr/bin/chromium (apt-get install chromium)"
[ -d "$ROOT/simulations/ui/node_modules/playwright-core" ] || die "run npm ci in simulations/ui first"
[ -x "$BIN/tether-agent" ] || die "no tether-agent in $BIN"

start_hub
echo "hub up at $HUB_URL"

# Three clusters approved by their token, labelled by region and zone; one waiting for approval.
AUTO=$(ctl token create --auto-approve --uses 3 --ttl 15m 2>/dev/null)
MANUAL=$(ctl token create --uses 1 --ttl 15m 2>/dev/null)
start_agent eu-1 "$AUTO" --label region=eu --label zone=eu-a
start_agent eu-2 "$AUTO" --label region=eu --label zone=eu-b
start_agent us-1 "$AUTO" --label region=us --label zone=us-a
start_agent us-2 "$MANUAL" --label region=us --label zone=us-b
ready3() {
  [ "$(ctl clusters list -o json | python3 -c 'import json,sys; print(sum(c["state"]=="Ready" for c in json.load(sys.stdin)))')" = 3 ]
}
wait_for 60 "three clusters Ready" ready3
pending1() {
  curl -sf --cacert "$ADMIN-ca.crt" --cert "$ADMIN.crt" --key "$ADMIN.key" "$HUB_URL/v1/join-requests" |
    python3 -c 'import json,sys; sys.exit(0 if any(j["name"]=="us-2" and j["state"]=="Pending" for j in json.load(sys.stdin)) else 1)'
}
wait_for 60 "us-2's join request pending" pending1

# A viewer credential, made the way an operator would (key on "their" machine, CSR signed).
ctl admins request viewer --dir "$W" >/dev/null
ctl admins add viewer --role viewer --csr "$W/viewer.csr" --out "$W/viewer.issued" >/dev/null
ctl admins install "$W/viewer.issued" --key "$W/viewer.key" --out "$W/viewer.yaml" >/dev/null
VIEWER=$W/viewer
pem_files "$W/viewer.yaml" "$VIEWER"

export HUB_URL ADMIN_CERT=$ADMIN.crt ADMIN_KEY=$ADMIN.key VIEWER_CERT=$VIEWER.crt VIEWER_KEY=$VIEWER.key
START=$SECONDS
node "$ROOT/simulations/ui/dashboard.test.mjs" || die "the browser test failed (screenshots in $SHOTS)"
echo "browser test passed in $((SECONDS - START))s; screenshots in $SHOTS"
if [ "${UPDATE_DOCS_IMAGES:-0}" = 1 ]; then
  for page in overview cluster joins; do
    cp "$SHOTS/$page.png" "$ROOT/docs/images/dashboard-$page.png"
  done
  # The work page mid-rollout says more than the finished one (taken when the poll saw it).
  if [ -f "$SHOTS/work-progressing.png" ]; then
    cp "$SHOTS/work-progressing.png" "$ROOT/docs/images/dashboard-work.png"
  else
    cp "$SHOTS/work.png" "$ROOT/docs/images/dashboard-work.png"
  fi
  echo "copied to docs/images/"
fi
