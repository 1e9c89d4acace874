#!/usr/bin/env bash
# Conformance of the running gateway to its contract, with third-party tools:
#
# 1. schemathesis (pinned) fuzzes the public listener against openapi/csgate.yaml: every
#    check on (server errors, status codes, content types, response schemas and headers,
#    negative and positive data, unsupported methods, use after free, ...), the stateful
#    phase on (start -> state -> lookup -> end through the document's links), a fixed
#    seed and a fixed number of examples per operation.
# 2. httplint (pinned) reads recorded answers of every route (hit, miss, error, HEAD, a
#    request with If-None-Match) and must report no WARN or BAD item; every Query
#    Services answer must be one that caches may not store.
#
# Runs the release binary with the embedded store on free loopback ports and polls the
# admin /readyz for readiness. Needs python3 (venv, pip reaching PyPI), curl and promtool
# (Debian's prometheus package; .ci/run installs it). Exits non-zero when a tool finds
# something. Usage: .ci/conformance.sh
#
# 3. promtool (Debian's) checks the live /metrics in the Prometheus text format, and the
#    OpenMetrics answer is checked for its content type and closing # EOF.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

SCHEMATHESIS_VERSION=4.32.5
HTTPLINT_VERSION=2026.10.4
# Enough to cover every operation in every phase; the run takes about 2 minutes.
EXAMPLES=${CONFORMANCE_EXAMPLES:-25}
SEED=${CONFORMANCE_SEED:-20261129}

venv=$root/target/conformance/venv
work=$(mktemp -d)
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    # csgate's log outlives the run, for a failure's diagnosis.
    cp "$work/csgate.log" "$root/target/conformance/csgate.log" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== conformance: tools (schemathesis $SCHEMATHESIS_VERSION, httplint $HTTPLINT_VERSION)"
want="schemathesis==$SCHEMATHESIS_VERSION httplint==$HTTPLINT_VERSION"
if [[ ! -x $venv/bin/python ]] || [[ "$(cat "$venv/.pinned" 2>/dev/null)" != "$want" ]]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check $want
    echo "$want" >"$venv/.pinned"
fi

echo "== conformance: cargo build --release"
cargo build --release --locked --quiet

# Two free loopback ports (bound, read and released: nothing else on this loopback
# address asks for ports in between).
read -r public admin < <("$venv/bin/python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
# The shipped settings but no business-attribute maps: the document's schemas describe
# free-form type names (with a map, an unknown name is a documented 400).
cat >"$work/csgate.toml" <<EOF
[server]
listen = "127.0.0.1:$public"
[admin]
listen = "127.0.0.1:$admin"
[log]
level = "warn"
[store]
db = "$work/store.sqlite"
EOF
target/release/csgate --config "$work/csgate.toml" >"$work/csgate.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    if curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        cat "$work/csgate.log"
        echo "csgate exited before it was ready" >&2
        exit 1
    fi
    sleep 0.1
done
curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null || {
    echo "csgate is not ready after 10 s" >&2
    exit 1
}
base=http://127.0.0.1:$public/genesys/1/cs

echo "== conformance: schemathesis ($EXAMPLES examples per operation, seed $SEED)"
report=$root/target/conformance/report
rm -rf "$report"
started=$(date +%s)
# One worker: hypothesis's lambda descriptions call ast.parse, which is not thread-safe
# on CPython 3.11 ("AST constructor recursion depth mismatch").
(
    # schemathesis keeps a cache in its working directory: not in the source tree.
    cd "$root/target/conformance"
    PYTHONPATH=$root/.ci "$venv/bin/schemathesis" --config-file "$root/.ci/schemathesis.toml" run \
        "$root/openapi/csgate.yaml" --url "$base" \
        --checks all --phases examples,coverage,fuzzing,stateful \
        --seed "$SEED" --max-examples "$EXAMPLES" --workers 1 \
        --report junit --report-dir "$report"
)
echo "schemathesis took $(($(date +%s) - started)) s"

echo "== conformance: httplint"
# record NAME METHOD PATH [curl arguments]: PATH is under the API prefix, or under the
# public root when it starts with '!'. Writes come first so that the reads find data.
json=(-H 'Content-Type: application/json')
key=408-832-7799
answers=$root/target/conformance/answers
rm -rf "$answers"
mkdir -p "$answers"
record() {
    local name=$1 method=$2 path=$3
    shift 3
    local url=$base$path target=/genesys/1/cs$path
    if [[ $path == !* ]]; then
        target=${path#!}
        url=http://127.0.0.1:$public$target
    fi
    local how=(-X "$method")
    [[ $method == HEAD ]] && how=(--head)
    curl -s -i "${how[@]}" "$@" "$url" >"$answers/$name.http"
    # Answers of the Query Services routes (and Query Service by ID) to a GET.
    local kind=other
    [[ $method == GET && $name =~ ^(anonymous|customer|service-by-id) ]] && kind=query
    printf '%s\t%s\t%s\t%s\n' "$name" "$method" "$target" "$kind" >>"$answers/index.tsv"
}
record start-service POST /services/start "${json[@]}" \
    -d "{\"contact_key\":\"$key\",\"service_type\":1,\"media_type\":\"voice\",\"reason\":\"new account\"}"
id=$(sed -n 's/.*"service_id":\([0-9]*\).*/\1/p' "$answers/start-service.http")
[[ -n $id ]] || {
    cat "$answers/start-service.http"
    exit 1
}
record start-state POST "/services/$id/states/start" "${json[@]}" -d '{"state_type":4}'
record start-task POST "/services/$id/tasks/start" "${json[@]}" -d '{"task_type":1,"state_id":1}'
record anonymous-miss GET "/services/anonymous/$key?active_states=true&extensions=reason"
record anonymous-hit GET "/services/anonymous/$key?active_states=true&extensions=reason"
record anonymous-active GET "/services/anonymous/$key/active"
record anonymous-completed GET "/services/anonymous/$key/completed"
record anonymous-head HEAD "/services/anonymous/$key/active"
record anonymous-if-none-match GET "/services/anonymous/$key" -H 'If-None-Match: "x"'
record anonymous-no-cache GET "/services/anonymous/$key" -H 'Cache-Control: no-cache'
record anonymous-no-store GET "/services/anonymous/$key" -H 'Cache-Control: no-store'
record anonymous-invalid GET "/services/anonymous/$key?started_from=2023-02-30T00:00:00Z"
record anonymous-post POST "/services/anonymous/$key"
record service-extension PUT "/services/$id/extensions/segment" "${json[@]}" -d '{"tier":"gold"}'
record service-extension-merge PUT "/services/$id/extensions/segment/merge" "${json[@]}" -d '{"since":2020}'
record state-extension PUT "/services/$id/states/1/extensions/note" "${json[@]}" -d '"queued"'
record state-extension-merge PUT "/services/$id/states/1/extensions/meta/merge" "${json[@]}" -d '{"a":1}'
record task-extension PUT "/services/$id/tasks/1/extensions/note" "${json[@]}" -d '"called back"'
record task-extension-merge PUT "/services/$id/tasks/1/extensions/meta/merge" "${json[@]}" -d '{"a":1}'
record associate POST "/customers/ABC1234/services/$id"
record customer GET "/customers/ABC1234/services?active_states=true&active_tasks=true"
record customer-active GET /customers/ABC1234/services/active
record customer-completed GET /customers/ABC1234/services/completed
record customer-head HEAD /customers/ABC1234/services
record customer-if-none-match GET /customers/ABC1234/services/active -H 'If-None-Match: *'
record customer-invalid GET "/customers/ABC1234/services/active?completed_from=2026-01-01T00:00:00Z"
record service-by-id GET "/services/$id?active_states=true&completed_states=true"
record service-by-id-if-none-match GET "/services/$id" -H 'If-None-Match: "x"'
record service-by-id-unknown GET /services/999999
record states GET "/services/$id/states"
record states-active GET "/services/$id/states/active?active_tasks=true"
record states-completed GET "/services/$id/states/completed"
record state GET "/services/$id/states/1"
record tasks GET "/services/$id/tasks"
record tasks-active GET "/services/$id/tasks/active"
record tasks-completed GET "/services/$id/tasks/completed?state_id=1"
record task GET "/services/$id/tasks/1"
record transition POST "/services/$id/states/transition" "${json[@]}" \
    -d '{"from":{"state_id":1},"to":{"state_type":8}}'
record end-state POST "/services/$id/states/2/end" "${json[@]}" -d '{}'
record end-task POST "/services/$id/tasks/1/end" "${json[@]}" -d '{}'
record expiry PUT "/services/$id" "${json[@]}" -d '{"ttl":3600}'
record end-service POST "/services/$id/end" "${json[@]}" -d '{"disposition":1}'
record end-service-again POST "/services/$id/end" "${json[@]}" -d '{}'
record attributes GET /metadata/business-attributes
record attribute-unknown GET /metadata/business-attributes/nothing
record delete-service DELETE "/services/$id"
record purge POST /maintenance/purge "${json[@]}" -d '{}'
record outside-prefix GET '!/other'
record query-too-long GET "/services/anonymous/$key?x=$(head -c 9000 /dev/zero | tr '\0' a)"

"$venv/bin/python" .ci/lint_answers.py "$answers"

echo "== conformance: promtool check metrics on the live /metrics"
# After the traffic above, so every family has series. promtool 2.x lints the Prometheus
# text format, which /metrics serves without an Accept header; the OpenMetrics answer
# (Accept: application/openmetrics-text) must carry its own content type and end in # EOF.
metrics_url=http://127.0.0.1:$admin/metrics
curl -fs "$metrics_url" | promtool check metrics
openmetrics=$work/metrics.openmetrics
content_type=$(curl -fs -o "$openmetrics" -w '%{content_type}' \
    -H 'Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5' \
    "$metrics_url")
[[ $content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8" ]] || {
    echo "OpenMetrics served as '$content_type'" >&2
    exit 1
}
[[ $(tail -n 1 "$openmetrics") == "# EOF" ]] || {
    echo "the OpenMetrics answer does not end in # EOF" >&2
    exit 1
}
echo "promtool: clean; OpenMetrics: $content_type"
echo "== conformance: passed"
