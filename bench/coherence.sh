#!/usr/bin/env bash
# The coherence oracle of issue 20 for as long as asked: random operations through
# csgate (cache on, long TTL) in front of the reference store, every read compared with
# the same read sent straight to the store (tests/oracle, tests/coherence.rs `long_run`).
#
#   bench/coherence.sh --minutes N [--ops N] [--workers N] [--seed N] [--steps N]
#
# Stops at whichever comes first, N minutes or N operations (one of them is needed;
# --ops alone runs until that many operations). --workers N parallel workers (default
# 8), each running its own fresh deployments; --seed N replays a run (the report gives
# the seed); --steps N caps the steps per case (default 60).
#
# Builds the test in release mode. Writes bench/results/coherence-<UTC stamp>.md (ops,
# reads compared, divergences with their shrunk cases as curl commands, ops/s, seed,
# commit) and exits non-zero when a divergence was found. Respects CARGO_TARGET_DIR.
set -euo pipefail

BENCH_NAME=coherence
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

MINUTES=""
OPS=""
WORKERS=8
SEED=""
STEPS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --minutes) MINUTES="$2"; shift ;;
        --ops) OPS="$2"; shift ;;
        --workers) WORKERS="$2"; shift ;;
        --seed) SEED="$2"; shift ;;
        --steps) STEPS="$2"; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[[ -n $MINUTES || -n $OPS ]] || die "give --minutes N and/or --ops N"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$HERE/results"
REPORT="$HERE/results/coherence-$STAMP.md"

# What is built, read before the build: the tree may change during a long run.
COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    COMMIT="$COMMIT (with uncommitted changes)"
fi
log "building the coherence test (release) at $COMMIT"
(cd "$REPO" && cargo test --release --quiet --test coherence --no-run)

ENV=(COHERENCE_REPORT="$REPORT" COHERENCE_WORKERS="$WORKERS" COHERENCE_COMMIT="$COMMIT")
[[ -n $MINUTES ]] && ENV+=(COHERENCE_MINUTES="$MINUTES")
[[ -n $OPS ]] && ENV+=(COHERENCE_OPS="$OPS")
[[ -n $SEED ]] && ENV+=(COHERENCE_SEED="$SEED")
[[ -n $STEPS ]] && ENV+=(COHERENCE_STEPS="$STEPS")
# COHERENCE_DEPLOY=fleet in the environment: three replicas on one redis-server.
[[ -n ${COHERENCE_DEPLOY:-} ]] && ENV+=(COHERENCE_DEPLOY="$COHERENCE_DEPLOY" CSGATE_REQUIRE_REDIS=1)
log "running: ${MINUTES:-unbounded} minutes, ${OPS:-unbounded} operations, $WORKERS workers"
status=0
(cd "$REPO" && env "${ENV[@]}" cargo test --release --quiet --test coherence long_run -- --ignored --nocapture) || status=$?
[[ -f $REPORT ]] || die "no report was written (the test failed before the end, status $status)"
log "report: $REPORT"
grep -E '^\| (operations|reads compared|\*\*divergences\*\*|operations/s) ' "$REPORT" >&2 || true
exit "$status"
