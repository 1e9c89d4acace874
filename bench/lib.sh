# Shared by bench/run.sh, bench/fleet.sh and bench/flood.sh (sourced, not run): logging,
# the release build, the temp dir and process clean-up, ports, readiness.
#
# The sourcing script sets BENCH_NAME (the log prefix) and HERE/REPO first.

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Builds csgate (unless CSGATE_BIN names another binary) and the bench tools in release
# mode, and checks that csgate and each named tool exist. Sets TARGET_DIR, BIN and
# CSGATE_BIN. Respects CARGO_TARGET_DIR.
bench_build() { # tool...
    TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
    BIN="$TARGET_DIR/release"
    if [[ -n ${CSGATE_BIN:-} ]]; then
        log "building the bench tools (release, target dir $TARGET_DIR); csgate is $CSGATE_BIN"
    else
        log "building csgate and the bench tools (release, target dir $TARGET_DIR)"
        (cd "$REPO" && cargo build --release --quiet --bin csgate)
        CSGATE_BIN="$BIN/csgate"
    fi
    cargo build --release --quiet --manifest-path "$HERE/tools/Cargo.toml" --target-dir "$TARGET_DIR"
    local b
    for b in "$@"; do
        [[ -x $BIN/$b ]] || die "missing binary $BIN/$b"
    done
    [[ -x $CSGATE_BIN ]] || die "missing binary $CSGATE_BIN"
}

# A temp dir for the run (TMP) and the PIDS array: on exit every PID in it is killed and
# the dir removed (KEEP_TMP=1 keeps it). Raises the open-file limit for the servers.
bench_temp() {
    TMP="$(mktemp -d "/tmp/csgate-$BENCH_NAME.XXXXXX")"
    PIDS=()
    trap bench_cleanup EXIT
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
}

bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}

# A port below the ephemeral range (so no outgoing connection holds it) that nothing
# listens on. A race with another process binding it is possible, but it fails loudly.
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

wait_http() { # url [seconds]
    local i
    for ((i = 0; i < ${2:-20} * 10; i++)); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    die "$1 did not answer"
}
