#!/usr/bin/env bash
# csgate memory under a unique-key flood (issue 10 item 18): embedded store, anonymous
# look-ups of contact keys never seen before, fetched once each, so every request is a
# miss that reaches SQLite and leaves one more entry in the cache.
#
#   bench/flood.sh [--keys N] [--seed N] [--max-bytes 256MiB] [--store-memory SIZE]
#                  [--note "text"]
#
# --store-memory SIZE sets `[store] max_memory_bytes` (default: csgate's own default).
# --seed N: the store starts with N services (contact keys flood-0 .. flood-N-1, copies
# of one service started through the API, with a state and attached data), so that part
# of the flood finds services and SQLite reads real pages; the rest finds none (`[]`).
#
# Runs csgate three times on a fresh database: with the cache at `--max-bytes`, with
# the cache disabled (what the store, the runtime and the allocator cost on their own),
# and both again under the env given in FLOOD_ENV, if any (e.g.
# FLOOD_ENV="MIMALLOC_PURGE_DELAY=0" to try an allocator setting). At each
# checkpoint it records VmRSS/VmHWM and the RssAnon/RssFile/RssShmem split from
# /proc/PID/status, and the cache's own count (`GET /cache/stats`), then derives the
# envelope per part: process baseline, store (SQLite page caches, WAL index,
# statements), cache (entries as weighed vs. as resident).
#
# CSGATE_BIN=/path/to/csgate measures that binary instead of building this checkout.
# Needs: curl, taskset, cargo. Writes bench/results/flood-<UTC stamp>.md; everything else
# lives in a temp dir removed on exit (KEEP_TMP=1 keeps it). Respects CARGO_TARGET_DIR.
set -euo pipefail

KEYS=400000
SEED=200000
MAX_BYTES=256MiB
STORE_MEMORY=""
NOTE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --keys) KEYS="$2"; shift ;;
        --seed) SEED="$2"; shift ;;
        --store-memory) STORE_MEMORY="$2"; shift ;;
        --max-bytes) MAX_BYTES="$2"; shift ;;
        --note) NOTE="$2"; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
# Checkpoints: empty, a quarter, half, all of the flood.
CHECKPOINTS=(0 $((KEYS / 4)) $((KEYS / 2)) "$KEYS")
CONCURRENCY=32
TENANT="flood-tenant"
SERVER_CPU=0           # csgate (and its embedded store)
LOAD_CPU=1             # the load generator

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RESULTS="$HERE/results"

log() { printf '[flood %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in curl taskset cargo bc sqlite3; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool"
done
[[ $(nproc) -ge 2 ]] || die "needs at least 2 CPUs (csgate and load generator on separate cores)"

# ------------------------------------------------------------------------------- build
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
BIN="$TARGET_DIR/release"
if [[ -n ${CSGATE_BIN:-} ]]; then
    log "building the load generator (release, target dir $TARGET_DIR); csgate is $CSGATE_BIN"
else
    log "building csgate and the load generator (release, target dir $TARGET_DIR)"
    (cd "$REPO" && cargo build --release --quiet --bin csgate)
    CSGATE_BIN="$BIN/csgate"
fi
cargo build --release --quiet --manifest-path "$HERE/tools/Cargo.toml" --target-dir "$TARGET_DIR" --bin loadgen
[[ -x $BIN/loadgen ]] || die "missing binary $BIN/loadgen"
[[ -x $CSGATE_BIN ]] || die "missing binary $CSGATE_BIN"

# ----------------------------------------------------------------------- process control
TMP="$(mktemp -d /tmp/csgate-flood.XXXXXX)"
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

free_port() { # as in bench/run.sh: below the ephemeral range, nothing listening
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

wait_http() { # url [seconds]
    local i
    for ((i = 0; i < ${2:-20} * 10; i++)); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    die "$1 did not answer"
}

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# --------------------------------------------------------------------------------- runs
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
ROWS="$TMP/rows.md"
: >"$ROWS"
declare -A RSS HWM

start_csgate() { # name cache-toml env → sets CS_PORT CS_ADMIN CS_PID
    local name=$1 cache=$2 env=$3
    CS_PORT=$(free_port)
    CS_ADMIN=$(free_port)
    mkdir -p "$TMP/$name"
    if [[ -f $TMP/seed/store.sqlite ]]; then cp "$TMP/seed/store.sqlite" "$TMP/$name/"; fi
    cat >"$TMP/$name/csgate.toml" <<EOF
# Generated by bench/flood.sh: no upstream URL, so the embedded store serves.
[server]
listen = "127.0.0.1:$CS_PORT"
[admin]
listen = "127.0.0.1:$CS_ADMIN"
[store]
db = "$TMP/$name/store.sqlite"
${STORE_MEMORY:+max_memory_bytes = \"$STORE_MEMORY\"}
[cache]
$cache
[log]
level = "warn"
EOF
    # shellcheck disable=SC2086 # $env is a list of NAME=value words
    env $env taskset -c $SERVER_CPU "$CSGATE_BIN" --config "$TMP/$name/csgate.toml" \
        >"$TMP/$name/csgate.log" 2>&1 &
    CS_PID=$!
    PIDS+=($CS_PID)
    wait_http "http://127.0.0.1:$CS_ADMIN/healthz"
}

flood() { # name cache-toml env
    local name=$1 from=0 keys out stats entries cbytes rss hwm anon file shmem
    start_csgate "$@"
    for keys in "${CHECKPOINTS[@]}"; do
        if ((keys > from)); then
            log "$name: keys $from..$keys"
            out=$(taskset -c $LOAD_CPU "$BIN/loadgen" warm --target "http://127.0.0.1:$CS_PORT" \
                --pattern "/genesys/1/cs/services/anonymous/flood-{i}" --from $from --to "$keys" \
                --concurrency $CONCURRENCY --header "ContactCenterId: $TENANT")
            [[ $out == *'"non200":0'* && $out == *'"errors":0'* ]] || die "$name: flood failed: $out"
        fi
        from=$keys
        sleep 1 # let moka's housekeeping apply pending evictions before reading
        stats=$(curl -s "http://127.0.0.1:$CS_ADMIN/cache/stats" || true)
        entries=$(sed -nE 's/.*"entries":([0-9]+).*/\1/p' <<<"$stats")
        cbytes=$(sed -nE 's/.*"bytes":([0-9]+).*/\1/p' <<<"$stats")
        rss=$(status_kib "$CS_PID" VmRSS)
        hwm=$(status_kib "$CS_PID" VmHWM)
        anon=$(status_kib "$CS_PID" RssAnon)
        file=$(status_kib "$CS_PID" RssFile)
        shmem=$(status_kib "$CS_PID" RssShmem)
        RSS[$name/$keys]=$rss
        HWM[$name/$keys]=$hwm
        printf '| %s | %d | %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f |\n' "$name" "$keys" \
            "${entries:--}" "$(awk -v b="${cbytes:-}" 'BEGIN { if (b == "") print "-"; else printf "%.1f", b / 1048576 }')" \
            "$(bc <<<"scale=1; $rss / 1024")" "$(bc <<<"scale=1; $hwm / 1024")" \
            "$(bc <<<"scale=1; $anon / 1024")" "$(bc <<<"scale=1; $file / 1024")" \
            "$(bc <<<"scale=1; $shmem / 1024")" >>"$ROWS"
        log "$name $keys keys: VmRSS $rss KiB, VmHWM $hwm KiB, cache $stats"
        if [[ $name == cache* ]]; then CBYTES[$name/$keys]=${cbytes:-0}; fi
    done
    kill "$CS_PID"
    wait "$CS_PID" 2>/dev/null || true
}
declare -A CBYTES

# The seed: one service started through the API, copied SEED times in SQL.
if ((SEED > 0)); then
    start_csgate seed "enabled = false" ""
    api="http://127.0.0.1:$CS_PORT/genesys/1/cs/services"
    hdr=(-H "ContactCenterId: $TENANT" -H "Content-Type: application/json")
    id=$(curl -sf "${hdr[@]}" "$api/start" \
        -d '{"contact_key":"seed","service_type":1,"media_type":"voice","reason":"new wireless account","segment":"gold"}' |
        sed -nE 's/.*"service_id":"?([0-9]+).*/\1/p')
    [[ -n $id ]] || die "seed: the store did not start a service"
    curl -sf "${hdr[@]}" -d '{"state_type":4,"queue":"billing"}' "$api/$id/states/start" >/dev/null ||
        die "seed: the store did not start a state"
    kill "$CS_PID"
    wait "$CS_PID" 2>/dev/null || true
    sqlite3 "$TMP/seed/store.sqlite" >/dev/null <<SQL
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $SEED)
INSERT INTO services (contact_center_id, group_id, customer_id, contact_key, service_type,
    est_duration, started_at, started, completed_at, completed, disposition, disposition_desc,
    auto_complete_at, expires_at, extensions, next_state_id, next_task_id)
SELECT s.contact_center_id, s.group_id, s.customer_id, 'flood-' || n.i, s.service_type,
    s.est_duration, s.started_at, s.started, s.completed_at, s.completed, s.disposition,
    s.disposition_desc, s.auto_complete_at, s.expires_at, s.extensions, s.next_state_id,
    s.next_task_id
FROM n, services s WHERE s.service_id = $id;
INSERT INTO states SELECT c.service_id, t.state_id, t.state_type, t.est_duration,
    t.started_at, t.started, t.completed_at, t.completed, t.disposition, t.disposition_desc,
    t.extensions
FROM services c, states t WHERE t.service_id = $id AND c.service_id <> $id;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
    log "seeded $SEED services ($(du -m "$TMP/seed/store.sqlite" | cut -f1) MiB database)"
fi

CACHE_ON="enabled = true
ttl = \"10m\"
max_bytes = \"$MAX_BYTES\""
flood cache "$CACHE_ON" ""
flood nocache "enabled = false" ""
if [[ -n ${FLOOD_ENV:-} ]]; then
    flood cache-env "$CACHE_ON" "$FLOOD_ENV"
    flood nocache-env "enabled = false" "$FLOOD_ENV"
fi

# ------------------------------------------------------------------------------- report
mib() { bc <<<"scale=1; $1 / 1024"; }
N=$KEYS
max_kib=$(($(numfmt --from=iec-i "${MAX_BYTES%B}") / 1024))
envelope() { # suffix ("" or "-env")
    local c=cache$1 n=nocache$1 idle store_now store_peak res weighed
    idle=${RSS[$c/0]}
    store_now=$((${RSS[$n/$N]} - ${RSS[$n/0]}))
    store_peak=$((${HWM[$n/$N]} - ${RSS[$n/0]}))
    res=$((${RSS[$c/$N]} - ${RSS[$n/$N]}))
    weighed=$((${CBYTES[$c/$N]} / 1024))
    echo "| part | MiB | how it is measured |"
    echo "|---|---:|---|"
    echo "| process at start (binary, runtime, empty cache, store opened) | $(mib "$idle") | VmRSS before the flood |"
    echo "| store, runtime and allocator under the flood, cache off: after / peak | $(mib "$store_now") / $(mib "$store_peak") | cache-off VmRSS after − before / VmHWM − VmRSS before |"
    echo "| cache, resident | $(mib "$res") | cache-on VmRSS − cache-off VmRSS, same keys |"
    echo "| cache, as weighed (\`/cache/stats\` bytes) | $(mib "$weighed") | counts against max_bytes; resident / weighed = $(bc <<<"scale=2; $res / $weighed") |"
    echo "| total: VmRSS / VmHWM | $(mib "${RSS[$c/$N]}") / $(mib "${HWM[$c/$N]}") | max_bytes + 64 MiB = $(mib $((max_kib + 65536))) |"
    echo
    if ((${HWM[$c/$N]} <= max_kib + 65536)); then
        echo "Within max_bytes + 64 MiB."
    else
        echo "**Over max_bytes + 64 MiB** by $(mib $((${HWM[$c/$N]} - max_kib - 65536))) MiB at the peak."
    fi
}
mkdir -p "$RESULTS"
OUT="$RESULTS/flood-$STAMP.md"
{
    echo "# Memory under a unique-key flood ($STAMP)"
    echo
    echo "$KEYS distinct contact keys, each looked up once on \`/services/anonymous/{key}\` through"
    echo "csgate with its embedded store ($SEED of them with a service, the rest \`[]\`), $CONCURRENCY connections;"
    echo "\`cache.max_bytes\` = $MAX_BYTES, \`store.max_memory_bytes\` = ${STORE_MEMORY:-default}. csgate on core $SERVER_CPU, load generator on core $LOAD_CPU."
    echo "Commit $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet || echo ' (dirty)'); binary $CSGATE_BIN; $(nproc) CPUs, $(uname -sr)."
    if [[ -n $NOTE ]]; then echo; echo "Note: $NOTE"; fi
    echo
    echo "| run | keys | cache entries | cache bytes MiB | VmRSS MiB | VmHWM MiB | RssAnon MiB | RssFile MiB | RssShmem MiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    cat "$ROWS"
    echo
    echo "## Envelope per part, after $KEYS keys"
    echo
    envelope ""
    if [[ -n ${FLOOD_ENV:-} ]]; then
        echo
        echo "## The same with \`$FLOOD_ENV\`"
        echo
        envelope -env
    fi
} >"$OUT"
log "wrote $OUT"
cat "$OUT"
