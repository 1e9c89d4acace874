#!/usr/bin/env bash
# The gray-failure matrix of issue 21 (tests/chaos.rs `full_matrix`): three csgate
# processes on one redis-server, each through a fault-injecting TCP hop, one reference
# store; per fault, stale lookups after acknowledged writes, client errors and when
# /healthz showed the degradation; then stampedes and a Redis fill.
#
#   bench/chaos.sh [--only SUBSTRING] [--debug]
#
# --only runs the rows whose name contains SUBSTRING (e.g. "SIGSTOP", "stampede",
# "Redis fill"); --debug uses the debug build (quicker to build, slower to run).
#
# Builds the test in release mode (csgate and the test binary). Writes
# bench/results/chaos-<UTC stamp>.md (the table, the worst stale lookups per row, the
# broken bounds, the commit) and exits non-zero when a bound was broken. Needs
# redis-server on PATH. Respects CARGO_TARGET_DIR.
set -euo pipefail

BENCH_NAME=chaos
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

ONLY=""
PROFILE=(--release)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --only) ONLY="$2"; shift ;;
        --debug) PROFILE=() ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
command -v redis-server >/dev/null || die "redis-server not found on PATH"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$HERE/results"
REPORT="$HERE/results/chaos-$STAMP.md"

# What is built, read before the build: the tree may change during the run.
COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    COMMIT="$COMMIT (with uncommitted changes)"
fi
log "building the chaos test (${PROFILE[*]:-debug}) at $COMMIT"
(cd "$REPO" && cargo test "${PROFILE[@]}" --quiet --test chaos --no-run)

ENV=(CHAOS_REPORT="$REPORT" CHAOS_COMMIT="$COMMIT" CSGATE_REQUIRE_REDIS=1)
[[ -n $ONLY ]] && ENV+=(CHAOS_ONLY="$ONLY")
log "running the matrix${ONLY:+ (rows matching \"$ONLY\")}"
status=0
(cd "$REPO" && env "${ENV[@]}" cargo test "${PROFILE[@]}" --quiet --test chaos full_matrix -- --ignored --nocapture) || status=$?
[[ -f $REPORT ]] || die "no report was written (the test failed before the end, status $status)"
log "report: $REPORT"
grep -E '^\| ' "$REPORT" >&2 || true
exit "$status"
