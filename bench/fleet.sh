#!/usr/bin/env bash
# csgate fleet benchmark (issue 11): two replicas with [cluster] on one redis-server, a
# real `csgate store` as their upstream (so writes change answers).
#
#   bench/fleet.sh [--quick] [--note "text"]
#
# Reports (never asserted in tests):
# 1. coherence: writes through replica A while B is read back to back from the moment
#    A's 2xx is received (bench/tools fleetprobe): A's 2xx → B's first fresh answer
#    (measured by the tool, one HTTP round trip to B included), the publish → apply
#    delay (B's csgate_cluster_bus_delay_seconds histogram, from the message timestamp;
#    bucket bounds), and B's stale answers after A's 2xx and after A's 2xx + that
#    delay's p99 (must be 0);
# 2. hit throughput of one replica with [cluster] on vs off (same binary, same config
#    otherwise, pure hits with a 1 h TTL on the bench's fake upstream), wrk in
#    alternating rounds; target on/off ≥ 0.95.
#
# --quick: 200 coherence rounds, 4 × 3 s throughput rounds per system.
# full:    1,000 coherence rounds, 5 × 15 s.
#
# Needs: redis-server, wrk, curl, taskset, cargo. CSGATE_BIN=/path/to/csgate uses that
# binary instead of building this checkout. Writes bench/results/fleet-<UTC stamp>.md
# and raw-fleet-<stamp>.jsonl; everything else lives in a temp dir removed on exit
# (KEEP_TMP=1 keeps it). Respects CARGO_TARGET_DIR.
set -euo pipefail

MODE=full
NOTE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) MODE=quick ;;
        --note) NOTE="$2"; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $MODE == quick ]]; then
    PROBE_ROUNDS=200; TP_ROUNDS=4; TP_DURATION=3
else
    PROBE_ROUNDS=1000; TP_ROUNDS=5; TP_DURATION=15
fi
PROBE_KEYS=20          # contact keys the coherence rounds cycle through
TP_KEYS=1000           # contact keys on the throughput hit path
CONNECTIONS=64         # wrk connections
TENANT="bench-tenant"
SERVER_CPU=0           # the replicas
LOAD_CPU=1             # redis, the store, the load generator and the probe

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RESULTS="$HERE/results"

log() { printf '[fleet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in redis-server wrk curl taskset cargo; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool"
done
[[ $(nproc) -ge 2 ]] || die "needs at least 2 CPUs (replicas and load on separate cores)"

# ------------------------------------------------------------------------------- build
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
BIN="$TARGET_DIR/release"
if [[ -z ${CSGATE_BIN:-} ]]; then
    log "building csgate (release, target dir $TARGET_DIR)"
    (cd "$REPO" && cargo build --release --quiet --bin csgate)
    CSGATE_BIN="$BIN/csgate"
fi
log "building the bench tools"
cargo build --release --quiet --manifest-path "$HERE/tools/Cargo.toml" --target-dir "$TARGET_DIR"
for b in upstream loadgen fleetprobe; do
    [[ -x $BIN/$b ]] || die "missing binary $BIN/$b"
done
[[ -x $CSGATE_BIN ]] || die "missing binary $CSGATE_BIN"

# ----------------------------------------------------------------------- process control
TMP="$(mktemp -d /tmp/csgate-fleet.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# A port below the ephemeral range that nothing listens on (as bench/run.sh).
free_port() {
    local low port
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
    while :; do
        port=$((10000 + RANDOM % (low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
            ! grep -qi ":$(printf '%04X' "$port") " /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

wait_until() { # description command...
    local what=$1 i
    shift
    for ((i = 0; i < 200; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what did not come up"
}

RAW="$TMP/raw.jsonl"
emit() { printf '%s\n' "$1" >>"$RAW"; }
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ----------------------------------------------------------------------------- servers
REDIS_PORT=$(free_port)
taskset -c $LOAD_CPU redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --dir "$TMP" --maxmemory-policy noeviction >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
wait_until "redis-server" bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT"

STORE_PORT=$(free_port)
cat >"$TMP/store.toml" <<EOF
[log]
level = "warn"
EOF
taskset -c $LOAD_CPU "$CSGATE_BIN" --config "$TMP/store.toml" store \
    --listen "127.0.0.1:$STORE_PORT" --db "$TMP/store.sqlite" >"$TMP/store.log" 2>&1 &
PIDS+=($!)
wait_until "csgate store" curl -sf -o /dev/null -H "ContactCenterId: $TENANT" \
    "http://127.0.0.1:$STORE_PORT/genesys/1/cs/services/anonymous/probe"

UP_PORT=$(free_port)
taskset -c $LOAD_CPU "$BIN/upstream" --listen "127.0.0.1:$UP_PORT" >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
wait_until "fake upstream" curl -sf -o /dev/null "http://127.0.0.1:$UP_PORT/__count"

start_replica() { # name upstream-port namespace|"" → sets R_PORT R_ADMIN
    local name=$1 up=$2 namespace=$3
    R_PORT=$(free_port)
    R_ADMIN=$(free_port)
    cat >"$TMP/$name.toml" <<EOF
# Generated by bench/fleet.sh. Log level warn: no per-request access line.
[server]
listen = "127.0.0.1:$R_PORT"
[admin]
listen = "127.0.0.1:$R_ADMIN"
[upstream]
urls = ["http://127.0.0.1:$up"]
[cache]
ttl = "1h"
[log]
level = "warn"
EOF
    if [[ -n $namespace ]]; then
        printf '[cluster]\nredis_url = "redis://127.0.0.1:%s"\nnamespace = "%s"\n' \
            "$REDIS_PORT" "$namespace" >>"$TMP/$name.toml"
    fi
    taskset -c $SERVER_CPU "$CSGATE_BIN" --config "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    wait_until "$name" curl -sf -o /dev/null "http://127.0.0.1:$R_ADMIN/healthz"
    if [[ -n $namespace ]]; then
        wait_until "$name's subscription" bash -c \
            "curl -s http://127.0.0.1:$R_ADMIN/healthz | grep -q '\"connected\":true'"
    fi
}

# ------------------------------------------------------------------------ 1: coherence
start_replica a "$STORE_PORT" bench; A_PORT=$R_PORT
start_replica b "$STORE_PORT" bench; B_PORT=$R_PORT; B_ADMIN=$R_ADMIN
log "1. coherence: $PROBE_ROUNDS writes through A, B read back to back after each 2xx"
PROBE=$(taskset -c $LOAD_CPU "$BIN/fleetprobe" --a "http://127.0.0.1:$A_PORT" \
    --b "http://127.0.0.1:$B_PORT" --b-admin "http://127.0.0.1:$B_ADMIN" \
    --rounds "$PROBE_ROUNDS" --keys "$PROBE_KEYS" --header "ContactCenterId: $TENANT")
emit "{\"kind\":\"coherence\",${PROBE#\{}"
log "coherence: $PROBE"

# ----------------------------------------------------------------------- 2: throughput
start_replica on "$UP_PORT" bench-throughput; ON_PORT=$R_PORT
start_replica off "$UP_PORT" ""; OFF_PORT=$R_PORT
for ((i = 0; i < TP_KEYS; i++)); do
    echo "/genesys/1/cs/services/anonymous/key-$i"
done >"$TMP/hit.txt"
for port in "$ON_PORT" "$OFF_PORT"; do
    out=$(taskset -c $LOAD_CPU "$BIN/loadgen" warm --target "http://127.0.0.1:$port" \
        --urls "$TMP/hit.txt" --concurrency 16 --header "ContactCenterId: $TENANT")
    [[ $out == *'"non200":0'* && $out == *'"errors":0'* ]] || die "warming :$port failed: $out"
done
cat >"$TMP/uris.lua" <<'EOF'
local reqs, n, i = {}, 0, 0
function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    reqs[n] = wrk.format(nil, line, { ["ContactCenterId"] = args[2] })
  end
end
function request()
  i = i % n + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,"non200":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
EOF
log "2. hit throughput, cluster on vs off: $TP_ROUNDS rounds of ${TP_DURATION} s each"
declare -A RPS_SUM=([on]=0 [off]=0)
declare -A RPS=()
for ((r = 1; r <= TP_ROUNDS; r++)); do
    # Alternate which system goes first, so a drift in machine load hits both alike.
    if ((r % 2)); then order="on off"; else order="off on"; fi
    for system in $order; do
        port=$ON_PORT; [[ $system == off ]] && port=$OFF_PORT
        out=$(taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d"${TP_DURATION}s" --timeout 10s \
            -s "$TMP/uris.lua" "http://127.0.0.1:$port" -- "$TMP/hit.txt" "$TENANT")
        json=$(sed -n 's/^WRKJSON //p' <<<"$out")
        [[ -n $json ]] || die "wrk printed no result: $out"
        requests=$(sed -E 's/.*"requests":([0-9]+).*/\1/' <<<"$json")
        duration=$(sed -E 's/.*"duration_us":([0-9]+).*/\1/' <<<"$json")
        rps=$((requests * 1000000 / duration))
        RPS_SUM[$system]=$((RPS_SUM[$system] + rps))
        RPS[$system-$r]=$rps
        emit "{\"kind\":\"throughput\",\"cluster\":\"$system\",\"round\":$r,\"rps\":$rps,${json#\{}"
        log "round $r cluster $system: $rps req/s ($json)"
    done
done

# ------------------------------------------------------------------------------ report
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
RPS_ON=$((RPS_SUM[on] / TP_ROUNDS))
RPS_OFF=$((RPS_SUM[off] / TP_ROUNDS))
RATIO=$(awk -v a="$RPS_ON" -v b="$RPS_OFF" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
# The median of the rounds' on/off ratios: a round disturbed by another process on the
# machine moves it less than the means.
ROUND_ROWS=""
RATIOS=()
for ((r = 1; r <= TP_ROUNDS; r++)); do
    ratio=$(awk -v a="${RPS[on-$r]}" -v b="${RPS[off-$r]}" 'BEGIN { printf "%.3f", a / b }')
    RATIOS+=("$ratio")
    ROUND_ROWS+="| $r | ${RPS[off-$r]} | ${RPS[on-$r]} | $ratio |"$'\n'
done
MEDIAN_RATIO=$(printf '%s\n' "${RATIOS[@]}" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
GIT_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$([[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]] && echo yes || echo no)
emit "{\"kind\":\"meta\",\"mode\":\"$MODE\",\"date\":\"$STARTED\",\"commit\":\"$GIT_COMMIT\",\"dirty\":\"$GIT_DIRTY\",\"nproc\":$(nproc),\"loadavg_start\":\"$LOAD_START\",\"loadavg_end\":\"$LOAD_END\",\"redis\":\"$(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/')\",\"csgate_bin\":\"$CSGATE_BIN\",\"note\":\"$NOTE\",\"rps_on\":$RPS_ON,\"rps_off\":$RPS_OFF,\"ratio\":$RATIO,\"median_round_ratio\":$MEDIAN_RATIO}"

field() { # json key-regex (ending at the colon) → the number (or null) after it
    sed -E "s/.*$2([0-9.eE+-]+|null).*/\1/" <<<"$1"
}
FRESH_P50=$(field "$PROBE" '"fresh_us":\{[^}]*"p50":')
FRESH_P99=$(field "$PROBE" '"fresh_us":\{[^}]*"p99":')
FRESH_MAX=$(field "$PROBE" '"fresh_us":\{[^}]*"max":')
BUS_N=$(field "$PROBE" '"bus_delay":\{[^}]*"messages":')
BUS_P50=$(field "$PROBE" '"bus_delay":\{[^}]*"p50_le_s":')
BUS_P99=$(field "$PROBE" '"bus_delay":\{[^}]*"p99_le_s":')
STALE_ANY=$(field "$PROBE" '"stale":\{[^}]*"after_2xx":')
STALE_AFTER=$(field "$PROBE" '"stale":\{[^}]*"after_2xx_plus_bus_p99":')
STALE_LATEST=$(field "$PROBE" '"stale":\{[^}]*"latest_sent_us":')
BUCKETS=$(sed -E 's/.*"buckets":\[(.*)\],"messages".*/\1/; s/\],\[/; /g; s/[][]//g; s/,/: /g' <<<"$PROBE")
HITS_BEFORE=$(field "$PROBE" '"hits_before_write":')
NEVER=$(field "$PROBE" '"never_fresh":')
READS=$(field "$PROBE" '"reads_after_write":')
ms() { awk -v s="$1" 'BEGIN { if (s == "null") print "n/a"; else printf "%g ms", s * 1000 }'; }
us_ms() { awk -v u="$1" 'BEGIN { printf "%.3f ms", u / 1000 }'; }

mkdir -p "$RESULTS"
NAME="fleet-$STAMP"
cp "$RAW" "$RESULTS/raw-$NAME.jsonl"
cat >"$RESULTS/$NAME.md" <<EOF
# csgate fleet benchmark ($MODE), $STARTED

Commit $GIT_COMMIT (dirty: $GIT_DIRTY), $(nproc) CPUs, load average $LOAD_START at the
start and $LOAD_END at the end. Replicas pinned to CPU $SERVER_CPU; redis-server, the
\`csgate store\` upstream, wrk and the probe to CPU $LOAD_CPU. ${NOTE:+Note: $NOTE}

## 1. Coherence: writes through A, reads through B

$PROBE_ROUNDS rounds over $PROBE_KEYS contact keys: B read twice (the second read was a
hit in $HITS_BEFORE rounds), a start through A, then B read back to back for 20 ms from
the moment A's 2xx was received ($READS reads after a 2xx in all).

| measure | value |
|---|---|
| publish → applied on B, p50 (B's \`csgate_cluster_bus_delay_seconds\`, bucket bound, $BUS_N messages) | ≤ $(ms "$BUS_P50") |
| publish → applied on B, p99 (same) | ≤ $(ms "$BUS_P99") |
| the histogram over the run (bucket bound in s: messages, cumulative) | $BUCKETS |
| A's 2xx → B's first fresh answer received, p50 (probe; one HTTP round trip to B included) | $(us_ms "$FRESH_P50") |
| same, p99 | $(us_ms "$FRESH_P99") |
| same, max | $(us_ms "$FRESH_MAX") |
| B's stale answers sent after A's 2xx | $STALE_ANY (latest sent $(us_ms "$STALE_LATEST") after the 2xx) |
| **B's stale answers sent after A's 2xx + the bus delay p99** (target 0) | **$STALE_AFTER** |
| rounds where B never showed the write within 1 s | $NEVER |

## 2. Hit throughput of one replica, cluster on vs off

Pure hits ($TP_KEYS keys, 1 h TTL, the bench's fake upstream), wrk -t1 -c$CONNECTIONS,
$TP_ROUNDS alternating rounds of $TP_DURATION s each. The "on" replica is subscribed to
the same redis-server (namespace \`bench-throughput\`).

| round | off req/s | on req/s | on / off |
|---|---|---|---|
${ROUND_ROWS}| mean | $RPS_OFF | $RPS_ON | $RATIO |

**On / off, median of the rounds: $MEDIAN_RATIO** (target ≥ 0.95).

Raw JSON lines: \`raw-$NAME.jsonl\`.
EOF
log "wrote $RESULTS/$NAME.md"
cat "$RESULTS/$NAME.md"
