#!/usr/bin/env bash
# protocol/fuzz/run.sh [SECONDS]: build the fuzz targets (cargo-fuzz, libFuzzer, AddressSanitizer)
# and run each for SECONDS (default 60), starting from the seeds in corpus/<target>/. Exits
# non-zero if any target crashed, leaked, ran out of memory or hung; the input that did it is in
# artifacts/<target>/ and the target's log in target/fuzz-logs/<target>.log.
#
# Environment:
#   FUZZ_TARGETS   targets to run, space separated (default: all four; frame and bundle
#                  alone build without the hub, in minutes instead of ~16)
#   FUZZ_RUNS      run each target for this many executions instead of SECONDS (the long run
#                  of docs/fuzzing.md: FUZZ_RUNS=10000000)
#   FUZZ_ARGS      more libFuzzer flags, e.g. "-max_len=65536"
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a nightly toolchain (the sanitizer
# and coverage flags are nightly-only). What grows the corpus is kept in target/fuzz-corpus/,
# not in the checked-in seeds, so repeated local runs build on each other and git stays clean.
set -euo pipefail

SECS=${1:-60}
FUZZ=$(cd "$(dirname "$0")" && pwd)
cd "$FUZZ"
read -r -a TARGETS <<<"${FUZZ_TARGETS:-frame bundle work_yaml csr}"
read -r -a EXTRA <<<"${FUZZ_ARGS:-}"
# work_yaml and csr link the hub (feature `hub`); frame and bundle build without it, in minutes.
FEATURES=()
for t in "${TARGETS[@]}"; do
  case $t in work_yaml | csr) FEATURES=(--features hub) ;; esac
done

log() { printf '== %s (%ss)\n' "$*" "$SECONDS" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 2; }

command -v cargo-fuzz >/dev/null || die "cargo-fuzz not found: cargo install cargo-fuzz --locked"
rustup run nightly rustc --version >/dev/null 2>&1 ||
  die "no nightly toolchain: rustup toolchain install nightly --profile minimal"

log "cargo +nightly fuzz build"
start=$SECONDS
# Every target at once: they share one dependency build.
cargo +nightly fuzz build --fuzz-dir "$FUZZ" "${FEATURES[@]}" || die "build failed"
log "built in $((SECONDS - start))s"

if [ -n "${FUZZ_RUNS:-}" ]; then
  limit=(-runs="$FUZZ_RUNS")
else
  limit=(-max_total_time="$SECS")
fi

mkdir -p target/fuzz-logs
failed=()
summary=()
for t in "${TARGETS[@]}"; do
  [ -d "corpus/$t" ] || die "no seed corpus corpus/$t"
  work=target/fuzz-corpus/$t
  mkdir -p "$work" "artifacts/$t"
  logf=target/fuzz-logs/$t.log
  log "$t: ${limit[*]}"
  t0=$SECONDS
  # The growing corpus first (libFuzzer adds new inputs to the first directory), the seeds
  # second (read only). A single input running 10 s is a hang and fails the run.
  if cargo +nightly fuzz run --fuzz-dir "$FUZZ" "${FEATURES[@]}" "$t" "$work" "corpus/$t" -- \
    "${limit[@]}" -timeout=10 -print_final_stats=1 "${EXTRA[@]}" >"$logf" 2>&1; then
    result=ok
  else
    result=FAILED
    failed+=("$t")
    tail -n 40 "$logf" >&2
  fi
  secs=$((SECONDS - t0))
  done_line=$(grep -E '^#[0-9]+\s+(DONE|INITED)' "$logf" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logf" | tail -n 1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$logf" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || true)
  ft=$(grep -oE 'ft: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || true)
  corp=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$done_line" | cut -d' ' -f2 || true)
  summary+=("$(printf '%-10s %-7s %12s %9s %7s %6s %7s %12s %7s' "$t" "$result" "${execs:--}" \
    "${rate:--}" "$secs" "${cov:--}" "${ft:--}" "${corp:--}" "${rss:--}")")
done

printf '\n%-10s %-7s %12s %9s %7s %6s %7s %12s %7s\n' TARGET RESULT EXECS EXEC/S SECONDS COV FT CORPUS RSS_MB
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  printf '\nrun.sh: crashed: %s (inputs in %s/artifacts/<target>/, logs in %s/target/fuzz-logs/)\n' \
    "${failed[*]}" "$FUZZ" "$FUZZ" >&2
  exit 1
fi
