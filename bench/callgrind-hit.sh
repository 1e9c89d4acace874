#!/usr/bin/env bash
# Instructions per cache hit, counted by callgrind: deterministic where wall-clock rps is
# not (a shared machine moves rps by tens of percent; this moves by well under 1 %).
#
#   bench/callgrind-hit.sh [CSGATE_BINARY] [SWEEPS]
#
# Runs csgate under `valgrind --tool=callgrind`, warms it with the hit-path URIs of
# run.sh (1,000 keys × 6 variants), zeroes the counters, sends SWEEPS × 6,000 hits, and
# prints user-space instructions per hit plus the top inclusive functions. Kernel time
# (socket I/O) is not counted. Writes the callgrind output to bench/results/callgrind/.
#
# CSGATE_TRACING=1 turns `[tracing]` on, every request sampled, exporting to the bench
# upstream (which answers any POST with 200), for the cost of tracing on.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
BIN="$TARGET_DIR/release"
CSGATE="${1:-}"
SWEEPS="${2:-2}"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
command -v callgrind_control >/dev/null || { echo "needs callgrind_control (valgrind)" >&2; exit 1; }
if [[ -z $CSGATE ]]; then
    (cd "$REPO" && cargo build --release --quiet --bin csgate)
    CSGATE="$BIN/csgate"
fi
cargo build --release --quiet --manifest-path "$HERE/tools/Cargo.toml" --target-dir "$TARGET_DIR"

TMP="$(mktemp -d /tmp/csgate-callgrind.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

port() { echo $((10000 + RANDOM % 20000)); }
UP=$(port); CS=$(port); ADMIN=$(port)
"$BIN/upstream" --listen "127.0.0.1:$UP" >/dev/null 2>&1 &
PIDS+=($!)
cat >"$TMP/csgate.toml" <<EOF
[server]
listen = "127.0.0.1:$CS"
[admin]
listen = "127.0.0.1:$ADMIN"
[upstream]
urls = ["http://127.0.0.1:$UP"]
[cache]
ttl = "1h"
[log]
level = "warn"
EOF
if [[ ${CSGATE_TRACING:-0} == 1 ]]; then
    cat >>"$TMP/csgate.toml" <<EOF
[tracing]
enabled = true
endpoint = "http://127.0.0.1:$UP/v1/traces"
sampler = "always_on"
export_interval = "100ms"
EOF
fi
valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out" \
    "$CSGATE" --config "$TMP/csgate.toml" >"$TMP/valgrind.log" 2>&1 &
VG=$!
PIDS+=($VG)
for ((i = 0; i < 600; i++)); do curl -s -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && break; sleep 0.1; done

A=/genesys/1/cs/services/anonymous
for ((i = 0; i < 1000; i++)); do
    k="key-$i"
    echo "$A/$k"
    echo "$A/$k/active?active_states=true&active_tasks=true"
    echo "$A/$k/completed?completed_states=true&completed_tasks=true"
    echo "$A/$k?started_from=2024-02-01T00:00:00Z&started_to=2024-03-04T00:00:00.000Z"
    echo "$A/$k/active?service_types=1,3&segment=gold"
    echo "$A/$k?active_states=1&completed_states=TRUE&active_tasks&completed_tasks=true"
done | shuf --random-source=<(yes csgate-bench) >"$TMP/hit.txt"
for ((s = 0; s < SWEEPS; s++)); do cat "$TMP/hit.txt"; done >"$TMP/hits.txt"
HITS=$(wc -l <"$TMP/hits.txt")

lg() { "$BIN/loadgen" warm --target "http://127.0.0.1:$CS" --urls "$1" --concurrency 16 \
    --header "ContactCenterId: bench-tenant"; }
echo "warming (misses) ..." >&2
lg "$TMP/hit.txt" >/dev/null
callgrind_control -z "$VG" >/dev/null
echo "sending $HITS hits ..." >&2
lg "$TMP/hits.txt" >&2
callgrind_control -d "$VG" >/dev/null
sleep 1
OUT=$(ls -t "$TMP"/callgrind.out* | head -1)
TOTAL=$(callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
mkdir -p "$HERE/results/callgrind"  # git-ignored
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
cp "$OUT" "$HERE/results/callgrind/callgrind-hit-$STAMP.out"
echo "binary: $CSGATE"
echo "hits: $HITS, instructions: $TOTAL, per hit: $((TOTAL / HITS))"
# With several codegen units hyper 1.13 compiled `SmallVec::from_elem` out of line in
# `Server::parse`: about 2,000 instructions a hit filling header slots
# (bench/results/callgrind-hyper-20261205.md). Say so if a build brings it back.
FILL=$(callgrind_annotate --threshold=100 --inclusive=no "$OUT" 2>/dev/null \
    | awk '/smallvec::SmallVec<A>::from_elem/ && !n++ { gsub(",", "", $1); print $1 }')
if [[ -n $FILL ]] && ((FILL / HITS > 100)); then
    echo "note: smallvec::SmallVec::from_elem costs $((FILL / HITS)) instructions a hit" \
        "(out of line again? see bench/results/callgrind-hyper-20261205.md)"
fi
callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null | sed -n '/Ir/,$p' | head -45 | cut -c1-180 || true
