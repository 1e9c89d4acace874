#!/usr/bin/env bash
# csgate benchmark: csgate vs nginx proxy_cache/proxy_pass vs a minimal hyper "floor"
# (a server answering from a map on the hit path, a pooled hyper-util proxy elsewhere),
# on the same machine in the same run, systems alternating in rounds.
#
#   bench/run.sh [--quick] [--only hit,miss,miss40,pass,pass40,deep,rate,stampede,memory,fleet,flood]
#                [--note "text"]
#
# fleet and flood run bench/fleet.sh (two replicas on Redis: coherence, cluster on/off)
# and bench/flood.sh (memory under a unique-key flood, embedded store) after the rest;
# each writes its own report in bench/results (fleet-*.md, flood-*.md).
#
# CSGATE_BIN=/path/to/csgate benchmarks that binary instead of building this checkout
# (e.g. to compare a change before committing it); the report names the binary.
#
# --quick: 2 rounds of 3 s, one memory budget; about two minutes once built.
# full:    5 rounds of 15 s, two memory budgets; about 25 minutes with fleet and flood.
#
# Needs: nginx, wrk, redis-server, bc, sqlite3 (installed with apt-get when missing and
# running as root), curl, taskset, cargo. Writes bench/results/latest.{md,svg}, a timestamped copy of both and
# the raw JSON lines. Everything else lives in a temp dir removed on exit
# (KEEP_TMP=1 keeps it). Respects CARGO_TARGET_DIR.
set -euo pipefail

# ----------------------------------------------------------------------------- settings
MODE=full
NOTE=""
ALL_PHASES="hit,miss,miss40,pass,pass40,deep,rate,stampede,memory,fleet,flood"
PHASES=$ALL_PHASES
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) MODE=quick ;;
        --note) NOTE="$2"; shift ;;
        --only) PHASES="$2"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
phase() { [[ ",$PHASES," == *",$1,"* ]]; }
if phase rate && ! phase hit; then
    echo "--only: rate needs hit (its rates are fractions of nginx's hit-path rps)" >&2
    exit 2
fi

if [[ $MODE == quick ]]; then
    ROUNDS=2; DURATION=3; RATE_DURATION=3; RATE_ROUNDS=1; STAMPEDE_ROUNDS=2
    MEM_BUDGETS=(64MiB); MEM_KEYS=(10000 100000)
else
    ROUNDS=5; DURATION=15; RATE_DURATION=15; RATE_ROUNDS=3; STAMPEDE_ROUNDS=3
    MEM_BUDGETS=(64MiB 256MiB); MEM_KEYS=(10000 100000)
fi
KEYS=1000              # distinct contact keys on the hit path
CONNECTIONS=64         # wrk connections
RATE_CONNECTIONS=64    # constant-rate generator connections
STAMPEDE=1000          # concurrent cold requests
SLOW_MS=200            # upstream delay on the stampede key, so the requests overlap
# Cache TTL of both csgate and nginx. 1h: the hit path measures pure hits (the
# "upstream req/round" column stays 0); BENCH_TTL=30s (csgate's default) makes every
# hit round in full mode include one refresh of every entry.
TTL="${BENCH_TTL:-1h}"
TENANT="bench-tenant"
SERVER_CPU=0           # the server under test
LOAD_CPU=1             # load generator and fake upstream

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RESULTS="$HERE/results"

BENCH_NAME=bench
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

# ------------------------------------------------------------------------------- tools
need_apt=()
# (redis-server for the fleet phase, bc and sqlite3 for the flood phase.)
for tool in nginx wrk redis-server bc sqlite3; do
    command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
if [[ ${#need_apt[@]} -gt 0 ]]; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing ${need_apt[*]} with apt-get"
        apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        die "missing ${need_apt[*]}: install them (Debian: apt-get install ${need_apt[*]})"
    fi
fi
for tool in curl taskset cargo; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool"
done
NGINX="$(command -v nginx)"
[[ $(nproc) -ge 2 ]] || die "needs at least 2 CPUs (server and load generator on separate cores)"

# ------------------------------------------------------------------------------- build
bench_build upstream floor loadgen report

# ----------------------------------------------------------------------- process control
bench_temp

# Sum of user+system CPU ticks of the given PIDs.
cpu_ticks() {
    local total=0 pid f
    for pid in "$@"; do
        # nginx's cache loader exits a minute after start: a gone PID counts nothing.
        read -r -a f 2>/dev/null <"/proc/$pid/stat" || continue
        total=$((total + f[13] + f[14]))
    done
    echo "$total"
}
CLK_TCK="$(getconf CLK_TCK)"

# "busy total" jiffies of one CPU, from /proc/stat (busy = all but idle and iowait).
cpu_jiffies() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

upstream_count() { curl -s "http://127.0.0.1:$UP_PORT/__count"; }
upstream_total() { upstream_count | sed -E 's/.*"total":([0-9]+).*/\1/'; }
upstream_marked() { upstream_count | sed -E 's/.*"marked":([0-9]+).*/\1/'; }

RAW="$TMP/raw.jsonl"
emit() { printf '%s\n' "$1" >>"$RAW"; }

# --------------------------------------------------------------------------- URI lists
# Hit path: KEYS keys × 6 variants, shuffled with a fixed seed so every system sees the
# same sequence. The variants exercise the lifecycle routes, include flags (canonical
# and not), a date window, and a type + extension filter (its own cache entry in csgate,
# because the extension set is part of the key).
A=/genesys/1/cs/services/anonymous
C=/genesys/1/cs/customers
VARIANTS=6
fixed_shuffle() { shuf --random-source=<(yes csgate-bench); }
for ((i = 0; i < KEYS; i++)); do
    k="key-$i"
    echo "$A/$k"
    echo "$A/$k/active?active_states=true&active_tasks=true"
    echo "$A/$k/completed?completed_states=true&completed_tasks=true"
    echo "$A/$k?started_from=2024-02-01T00:00:00Z&started_to=2024-03-04T00:00:00.000Z"
    echo "$A/$k/active?service_types=1,3&segment=gold"
    echo "$A/$k?active_states=1&completed_states=TRUE&active_tasks&completed_tasks=true"
done | fixed_shuffle >"$TMP/hit.txt"
# Miss path: customer routes are never cached by csgate and not cached by nginx either.
for ((i = 0; i < KEYS; i++)); do
    k="cust-$i"
    echo "$C/$k/services"
    echo "$C/$k/services/active?active_states=true&active_tasks=true"
    echo "$C/$k/services/completed?completed_states=true&started_from=2024-01-01T00:00:00Z"
    echo "$C/$k/services?service_types=2&segment=silver"
done | fixed_shuffle >"$TMP/miss.txt"
# The same routes with a 40 KB answer (50 services; the fake upstream keys it on the
# `big-` prefix), and a pass-through of attached data nested 1,000 levels (`deep-`):
# no include flag, so the gateway's answer is the upstream's, byte for byte.
sed 's|/customers/cust-|/customers/big-|' "$TMP/miss.txt" >"$TMP/miss40.txt"
for ((i = 0; i < KEYS; i++)); do echo "$C/deep-$i/services"; done >"$TMP/deep.txt"
# The ceiling of the miss path on this HTTP stack: the same answers on a route csgate
# passes through (streamed, no validation, no post-filter), so csgate/nginx here is what
# the miss path would reach if reading the answer cost nothing.
sed 's|/services.*$|/profile|' "$TMP/miss.txt" >"$TMP/pass.txt"
sed 's|/services.*$|/profile|' "$TMP/miss40.txt" >"$TMP/pass40.txt"
HIT_URIS=$(wc -l <"$TMP/hit.txt")

# wrk script: requests are formatted once in init, so Lua costs little per request.
cat >"$TMP/uris.lua" <<'EOF'
local reqs, n, i = {}, 0, 0
function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    reqs[n] = wrk.format(nil, line)
  end
end
function request()
  i = i % n + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,"non200":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
EOF

# ------------------------------------------------------------------------------ servers
UP_PORT=$(free_port)
taskset -c $LOAD_CPU "$BIN/upstream" --listen "127.0.0.1:$UP_PORT" \
    --slow-marker stampede --slow-ms $SLOW_MS >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/__count"

start_csgate() { # name max_bytes ttl → sets CS_PORT CS_ADMIN CS_PID
    local name=$1 max_bytes=$2 ttl=$3
    CS_PORT=$(free_port)
    CS_ADMIN=$(free_port)
    cat >"$TMP/$name.toml" <<EOF
# Generated by bench/run.sh. Log level warn: no per-request access line (parity with
# nginx access_log off).
[server]
listen = "127.0.0.1:$CS_PORT"
[admin]
listen = "127.0.0.1:$CS_ADMIN"
[upstream]
urls = ["http://127.0.0.1:$UP_PORT"]
[cache]
ttl = "$ttl"
max_bytes = "$max_bytes"
[log]
level = "warn"
EOF
    taskset -c $SERVER_CPU "$CSGATE_BIN" --config "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
    CS_PID=$!
    PIDS+=($CS_PID)
    wait_http "http://127.0.0.1:$CS_ADMIN/healthz"
}

start_csgate csgate 256MiB "$TTL"
CSGATE_PORT=$CS_PORT; CSGATE_ADMIN=$CS_ADMIN; CSGATE_PID=$CS_PID

# nginx: one worker, no access log, keep-alive to the upstream, proxy_cache on the
# anonymous routes keyed like csgate (tenant headers + URI), lock on. Stale-while-
# updating and background update mirror csgate's stale-while-revalidate, so neither
# system blocks a hit on a refresh. keepalive_requests raised from 1000 so that neither
# side closes client or upstream connections mid-run (csgate and hyper do not).
NGX_PORT=$(free_port)
mkdir -p "$TMP/nginx/cache"
NGX_USER=""
[[ $EUID -eq 0 ]] && NGX_USER="user root;"
cat >"$TMP/nginx/nginx.conf" <<EOF
$NGX_USER
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy_temp;
    fastcgi_temp_path $TMP/nginx/fastcgi_temp;
    uwsgi_temp_path $TMP/nginx/uwsgi_temp;
    scgi_temp_path $TMP/nginx/scgi_temp;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    proxy_cache_path $TMP/nginx/cache levels=1:2 keys_zone=cs:32m max_size=1g inactive=10m use_temp_path=off;
    upstream cs_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /genesys/1/cs/services/anonymous/ {
            proxy_pass http://cs_upstream;
            proxy_cache cs;
            proxy_cache_key "\$http_contactcenterid|\$http_groupid|\$request_uri";
            proxy_cache_valid 200 $TTL;
            proxy_cache_lock on;
            proxy_cache_use_stale updating error timeout http_500 http_502 http_503 http_504;
            proxy_cache_background_update on;
        }
        location / {
            proxy_pass http://cs_upstream;
        }
    }
}
EOF
taskset -c $SERVER_CPU "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" \
    -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/stdout.log" 2>&1 &
NGX_PID=$!
PIDS+=($NGX_PID)
wait_http "http://127.0.0.1:$NGX_PORT/genesys/1/cs/customers/x/services"
NGX_PIDS="$NGX_PID $(pgrep -P "$NGX_PID" | tr '\n' ' ')"

warm() { # port uri-file
    local out
    out=$(taskset -c $LOAD_CPU "$BIN/loadgen" warm --target "http://127.0.0.1:$1" \
        --urls "$2" --concurrency 16 --header "ContactCenterId: $TENANT")
    [[ $out == *'"non200":0'* && $out == *'"errors":0'* ]] || die "warming :$1 failed: $out"
    log "warmed :$1 in $(sed -E 's/.*"secs":([0-9.]+).*/\1/' <<<"$out") s"
}

log "warming csgate and nginx with $HIT_URIS hit-path URIs"
warm "$CSGATE_PORT" "$TMP/hit.txt"
warm "$NGX_PORT" "$TMP/hit.txt"

FLOOR_PORT=$(free_port)
taskset -c $SERVER_CPU "$BIN/floor" --listen "127.0.0.1:$FLOOR_PORT" --urls "$TMP/hit.txt" \
    --prime-from "http://127.0.0.1:$CSGATE_PORT" --header "ContactCenterId: $TENANT" \
    >"$TMP/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=($FLOOR_PID)
for ((i = 0; i < 600; i++)); do grep -q primed "$TMP/floor.log" && break; sleep 0.1; done
grep -q primed "$TMP/floor.log" || die "floor did not prime: $(cat "$TMP/floor.log")"

# The floor of the other paths: a hyper server forwarding every request through
# hyper-util's pooled client, streaming the answer back, doing nothing else.
PFLOOR_PORT=$(free_port)
taskset -c $SERVER_CPU "$BIN/proxyfloor" --listen "127.0.0.1:$PFLOOR_PORT" \
    --upstream "http://127.0.0.1:$UP_PORT" >"$TMP/proxyfloor.log" 2>&1 &
PFLOOR_PID=$!
PIDS+=($PFLOOR_PID)
wait_http "http://127.0.0.1:$PFLOOR_PORT/__count"

# `floor` is the serving floor on the hit path and the proxy floor on every other one.
port_of() { # system [phase]
    case $1 in
        csgate) echo "$CSGATE_PORT" ;;
        nginx) echo "$NGX_PORT" ;;
        floor) if [[ ${2:-hit} == hit ]]; then echo "$FLOOR_PORT"; else echo "$PFLOOR_PORT"; fi ;;
    esac
}
pids_of() { # system [phase]
    case $1 in
        csgate) echo "$CSGATE_PID" ;;
        nginx) echo "$NGX_PIDS" ;;
        floor) if [[ ${2:-hit} == hit ]]; then echo "$FLOOR_PID"; else echo "$PFLOOR_PID"; fi ;;
    esac
}

# ------------------------------------------------------------------------------ meta
ANON_BYTES=$(curl -s "http://127.0.0.1:$UP_PORT/genesys/1/cs/services/anonymous/size" | wc -c)
CUST_BYTES=$(curl -s "http://127.0.0.1:$UP_PORT$C/size/services" | wc -c)
BIG_BYTES=$(curl -s "http://127.0.0.1:$UP_PORT/__body/big" | wc -c)
GIT_COMMIT=$(git -C "$REPO" rev-parse --short HEAD)
GIT_DIRTY=false
[[ -n $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock bench/tools) ]] && GIT_DIRTY=true
json_str() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

# ------------------------------------------------------------------- 1 + 2: throughput
throughput() { # phase uri-file system round
    local phase=$1 file=$2 system=$3 round=$4 port pids t0 t1 u0 u1 b0 b1 j0 j1 out json
    port=$(port_of "$system" "$phase")
    pids=$(pids_of "$system" "$phase")
    u0=$(upstream_total)
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $pids)
    read -r b0 j0 < <(cpu_jiffies $SERVER_CPU)
    out=$(taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d"${DURATION}s" --timeout 10s \
        -H "ContactCenterId: $TENANT" -s "$TMP/uris.lua" "http://127.0.0.1:$port" -- "$file")
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $pids)
    read -r b1 j1 < <(cpu_jiffies $SERVER_CPU)
    u1=$(upstream_total)
    json=$(grep '^WRKJSON ' <<<"$out" | sed 's/^WRKJSON //')
    [[ -n $json ]] || die "wrk printed no result: $out"
    local requests duration_us
    requests=$(sed -E 's/.*"requests":([0-9]+).*/\1/' <<<"$json")
    duration_us=$(sed -E 's/.*"duration_us":([0-9]+).*/\1/' <<<"$json")
    # core_other: the share of core 0 that processes other than the server used (other
    # builds on a shared machine); anything above a few % makes the round noisy.
    local rps cpu core_other cpu_us
    core_other=$(awk -v b="$((b1 - b0))" -v j="$((j1 - j0))" -v t="$((t1 - t0))" \
        'BEGIN { o = (j > 0) ? (b - t) / j : 0; if (o < 0) o = 0; printf "%.3f", o }')
    rps=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.1f", r / (d / 1e6) }')
    cpu=$(awk -v t="$((t1 - t0))" -v h="$CLK_TCK" -v d="$duration_us" 'BEGIN { printf "%.3f", t / h / (d / 1e6) }')
    # CPU time the server spent per request: less sensitive than rps to other processes
    # taking the core, since it counts only the server's own time.
    cpu_us=$(awk -v t="$((t1 - t0))" -v h="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.1f", (r > 0) ? t / h * 1e6 / r : 0 }')
    emit "{\"kind\":\"throughput\",\"phase\":\"$phase\",\"system\":\"$system\",\"round\":$round,\"rps\":$rps,\"server_cpu\":$cpu,\"core_other\":$core_other,\"cpu_us_per_req\":$cpu_us,\"upstream_requests\":$((u1 - u0)),${json#\{}"
    log "$phase $system round $round: $rps rps, $cpu_us CPU-µs/req, server CPU $cpu, others on core $SERVER_CPU $core_other, upstream +$((u1 - u0))"
}

if phase hit; then
    log "1. hit path: $ROUNDS rounds × ${DURATION}s, csgate / nginx / floor"
    for ((r = 1; r <= ROUNDS; r++)); do
        for system in csgate nginx floor; do throughput hit "$TMP/hit.txt" "$system" "$r"; done
    done
fi

for miss in miss miss40 pass pass40; do
    phase $miss || continue
    log "2. miss path ($miss): $ROUNDS rounds × ${DURATION}s, csgate / nginx / proxy floor"
    for ((r = 1; r <= ROUNDS; r++)); do
        for system in csgate nginx floor; do throughput $miss "$TMP/$miss.txt" "$system" "$r"; done
    done
done

if phase deep; then
    # Correctness first: both systems must hand over the upstream's bytes unchanged.
    curl -s "http://127.0.0.1:$UP_PORT/__body/deep" >"$TMP/deep.expected"
    for system in csgate nginx; do
        status=$(curl -s -o "$TMP/deep.$system" -w '%{http_code}' -H "ContactCenterId: $TENANT" \
            "http://127.0.0.1:$(port_of $system)$C/deep-check/services")
        same=false
        cmp -s "$TMP/deep.expected" "$TMP/deep.$system" && same=true
        emit "{\"kind\":\"check\",\"name\":\"deep\",\"system\":\"$system\",\"status\":$status,\"identical\":$same,\"bytes\":$(wc -c <"$TMP/deep.$system"),\"levels\":1000}"
        log "deep pass-through $system: status $status, identical to the upstream's body: $same"
        [[ $status == 200 && $same == true ]] || die "$system did not pass the 1,000-deep answer through"
    done
    log "2b. deep pass-through: $ROUNDS rounds × ${DURATION}s, csgate / nginx / proxy floor"
    for ((r = 1; r <= ROUNDS; r++)); do
        for system in csgate nginx floor; do throughput deep "$TMP/deep.txt" "$system" "$r"; done
    done
fi

# ----------------------------------------------------------- 3: latency at fixed rates
RATE50=0
RATE80=0
if phase rate; then
    NGINX_HIT=$(grep '"kind":"throughput","phase":"hit","system":"nginx"' "$RAW" |
        sed -E 's/.*"rps":([0-9.]+).*/\1/' | sort -n |
        awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
    RATE50=$(awk -v m="$NGINX_HIT" 'BEGIN { printf "%.0f", m * 0.5 }')
    RATE80=$(awk -v m="$NGINX_HIT" 'BEGIN { printf "%.0f", m * 0.8 }')

    log "3. latency at ${RATE50} and ${RATE80} rps (50/80 % of nginx's $NGINX_HIT), ${RATE_DURATION}s each"
    warm "$CSGATE_PORT" "$TMP/hit.txt"
    warm "$NGX_PORT" "$TMP/hit.txt"
    for ((r = 1; r <= RATE_ROUNDS; r++)); do
        for load in 50 80; do
            rate=$RATE50
            [[ $load == 80 ]] && rate=$RATE80
            for system in csgate nginx; do
                out=$(taskset -c $LOAD_CPU "$BIN/loadgen" rate --target "http://127.0.0.1:$(port_of $system)" \
                    --urls "$TMP/hit.txt" --rate "$rate" --duration "$RATE_DURATION" \
                    --connections $RATE_CONNECTIONS --header "ContactCenterId: $TENANT")
                emit "{\"kind\":\"rate\",\"load\":$load,\"system\":\"$system\",\"round\":$r,${out#\{}"
                log "rate $load% $system: $out"
            done
        done
    done
fi

# ------------------------------------------------------------------------ 4: stampede
if phase stampede; then
    log "4. stampede: $STAMPEDE concurrent cold requests for one key, $STAMPEDE_ROUNDS rounds"
    for ((r = 1; r <= STAMPEDE_ROUNDS; r++)); do
        for system in csgate nginx; do
            key="stampede-$system-$STAMP-$r"
            m0=$(upstream_marked)
            out=$(taskset -c $LOAD_CPU "$BIN/loadgen" burst --target "http://127.0.0.1:$(port_of $system)" \
                --path "$A/$key" --connections $STAMPEDE --header "ContactCenterId: $TENANT")
            sleep 0.5
            m1=$(upstream_marked)
            emit "{\"kind\":\"stampede\",\"system\":\"$system\",\"round\":$r,\"upstream_requests\":$((m1 - m0)),${out#\{}"
            log "stampede $system round $r: upstream +$((m1 - m0)); $out"
        done
    done
fi

# -------------------------------------------------------------------------- 5: memory
# A separate csgate per budget, ttl long enough that nothing expires while filling.
kill "$FLOOR_PID" "$PFLOOR_PID" "$NGX_PID" 2>/dev/null || true
phase memory || MEM_BUDGETS=()
for budget in "${MEM_BUDGETS[@]}"; do
    start_csgate "mem-$budget" "$budget" 10m
    from=0
    for keys in 0 "${MEM_KEYS[@]}"; do
        log "5. memory: max_bytes $budget, filling keys $from..$keys"
        out=$(taskset -c $LOAD_CPU "$BIN/loadgen" warm --target "http://127.0.0.1:$CS_PORT" \
            --pattern "$A/mem-{i}" --from $from --to "$keys" --concurrency 32 \
            --header "ContactCenterId: $TENANT")
        sleep 0.5
        from=$keys
        stats=$(curl -s "http://127.0.0.1:$CS_ADMIN/cache/stats")
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$CS_PID/status")
        hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$CS_PID/status")
        max_bytes=$((${budget%MiB} * 1048576))
        entries=$(sed -E 's/.*"entries":([0-9]+).*/\1/' <<<"$stats")
        cbytes=$(sed -E 's/.*"bytes":([0-9]+).*/\1/' <<<"$stats")
        emit "{\"kind\":\"memory\",\"budget\":\"$budget\",\"max_bytes\":$max_bytes,\"keys\":$keys,\"rss_kib\":$rss,\"hwm_kib\":$hwm,\"entries\":$entries,\"cache_bytes\":$cbytes,\"fill\":$out}"
        log "memory $budget $keys keys: VmRSS $rss KiB, cache $stats"
    done
    kill "$CS_PID"
done

# ------------------------------------------------------------------- 6 + 7: fleet, flood
# Their own scripts, servers and reports; run.sh's servers are idle (or gone) by now.
SUB_REPORTS=()
if phase fleet; then
    log "6. fleet: bench/fleet.sh"
    fleet_args=()
    [[ $MODE == quick ]] && fleet_args+=(--quick)
    CSGATE_BIN="$CSGATE_BIN" bash "$HERE/fleet.sh" "${fleet_args[@]}" --note "$NOTE" >"$TMP/fleet.out" 2>&1 ||
        die "bench/fleet.sh failed: $(tail -5 "$TMP/fleet.out")"
    SUB_REPORTS+=("$(ls -t "$RESULTS"/fleet-*.md | head -1)")
fi
if phase flood; then
    log "7. flood: bench/flood.sh"
    CSGATE_BIN="$CSGATE_BIN" bash "$HERE/flood.sh" --note "$NOTE" >"$TMP/flood.out" 2>&1 ||
        die "bench/flood.sh failed: $(tail -5 "$TMP/flood.out")"
    SUB_REPORTS+=("$(ls -t "$RESULTS"/flood-*.md | head -1)")
fi

# -------------------------------------------------------------------------- report
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
emit "{\"kind\":\"meta\",\"mode\":\"$MODE\",\"date\":\"$STARTED\",\"commit\":\"$GIT_COMMIT\",\"dirty\":\"$GIT_DIRTY\",\"nproc\":$(nproc),\"cpu\":\"$(json_str "$CPU_MODEL")\",\"kernel\":\"$(uname -sr)\",\"loadavg_start\":\"$LOAD_START\",\"loadavg_end\":\"$LOAD_END\",\"nginx\":\"$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')\",\"wrk\":\"$(wrk -v 2>&1 | head -1 | awk '{ print $2 }')\",\"rustc\":\"$(rustc -V | awk '{ print $2 }')\",\"csgate_bin\":\"$(json_str "$CSGATE_BIN")\",\"phases\":\"$PHASES\",\"note\":\"$(json_str "$NOTE")\",\"rounds\":$ROUNDS,\"duration_s\":$DURATION,\"connections\":$CONNECTIONS,\"rate_connections\":$RATE_CONNECTIONS,\"keys\":$KEYS,\"variants\":$VARIANTS,\"hit_uris\":$HIT_URIS,\"slow_ms\":$SLOW_MS,\"ttl\":\"$TTL\",\"anonymous_body_bytes\":$ANON_BYTES,\"customer_body_bytes\":$CUST_BYTES,\"large_body_bytes\":$BIG_BYTES,\"rate50\":$RATE50,\"rate80\":$RATE80}"

mkdir -p "$RESULTS"
NAME="$MODE-$STAMP"
[[ $PHASES == "$ALL_PHASES" ]] || NAME="$MODE-only-${PHASES//,/-}-$STAMP"
cp "$RAW" "$RESULTS/raw-$NAME.jsonl"
"$BIN/report" --raw "$RAW" --md "$RESULTS/$NAME.md" --svg "$RESULTS/$NAME.svg"
sed -i "s/(latest.svg)/($NAME.svg)/" "$RESULTS/$NAME.md"
if [[ $NAME == "$MODE-$STAMP" ]]; then
    # Only a run of every phase replaces latest.*; partial runs keep their own name.
    sed "s/($NAME.svg)/(latest.svg)/" "$RESULTS/$NAME.md" >"$RESULTS/latest.md"
    cp "$RESULTS/$NAME.svg" "$RESULTS/latest.svg"
    log "wrote $RESULTS/latest.md and latest.svg (copies: $NAME.*)"
else
    log "wrote $RESULTS/$NAME.md and $NAME.svg (partial run: latest.* untouched)"
fi
cat "$RESULTS/$NAME.md"
for report in "${SUB_REPORTS[@]}"; do
    log "also written: $report"
done
