#!/usr/bin/env bash
# pqmesh local demo: a control plane and three sidecars on 127.0.0.1.
#
#   A (shop/web)      --outbound-->  B (shop/api)   allowed: B's sidecar lets only shop/web in
#   C (shop/intruder) --outbound-->  B (shop/api)   refused: wrong identity
#
# Everything runs from .demo/ at the repository root (recreated on every run) and is stopped
# when the script ends, fails or is interrupted. Run with --help for the options.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
usage: deploy/local/demo.sh [--keep-running] [--ml-dsa] [--help]

Builds pqmesh (cargo build --bins), starts a control plane (local mode) and three sidecars
on 127.0.0.1, sends one HTTP request from workload A (shop/web) to workload B (shop/api)
over hybrid post-quantum mTLS, shows that workload C (shop/intruder) is refused by B's
sidecar, prints a summary and stops everything again. Exits 0 only if all checks pass.

options:
  --keep-running  keep everything running after the summary, until Ctrl-C
  --ml-dsa        ML-DSA-65 certificates: PQMESH_CA_KEY_ALG=ml-dsa-65 for the control plane
                  and PQMESH_KEY_ALG=ml-dsa-65 for every sidecar (default: ECDSA P-256)
  -h, --help      show this help

environment:
  PQMESH_DEMO_PORT_BASE  base port (default 17000). The demo uses base+12 and base+14
                         (control plane), base+100..106 (A), base+200..280 (B) and
                         base+300..306 (C), all on 127.0.0.1.
  PQMESH_LOG             log filter for the pqmesh processes (default info)

State and logs: .demo/ at the repository root (.demo/<process>.log).
EOF
}

KEEP_RUNNING=0
ML_DSA=0
for arg in "$@"; do
    case "$arg" in
        --keep-running) KEEP_RUNNING=1 ;;
        --ml-dsa) ML_DSA=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "demo.sh: unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)
cd "$ROOT"
DEMO="$ROOT/.demo"

# ---------------------------------------------------------------------------------------------
# Failure reporting and cleanup
# ---------------------------------------------------------------------------------------------
# Messages from traps go to the script's original stderr, kept on fd 9: a signal can
# arrive while a command's output is redirected (e.g. a readiness probe's 2>/dev/null), and the
# trap would inherit that redirection.
exec 9>&2
PIDS=()       # every process this script started
NAMES=()      # ... and its name (its log is .demo/<name>.log)
INTERRUPTED=0
SLEEP_PID=    # the --keep-running loop's current `sleep`

fail() {
    echo >&9
    echo "demo FAILED: $*" >&9
    exit 1
}

alive() { # pid: running and not a zombie
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z* ]]
}

stop_all() {
    ((${#PIDS[@]} > 0)) || return 0
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give them 5 s to shut down cleanly, then SIGKILL; `wait` reaps every child either way.
    local deadline=$((SECONDS + 5)) running
    while :; do
        running=0
        for pid in "${PIDS[@]}"; do
            if alive "$pid"; then running=1; break; fi
        done
        ((running && SECONDS < deadline)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        if alive "$pid"; then
            echo "  $pid did not stop within 5 s, killing it" >&9
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

on_exit() {
    local rc=$?
    set +e # clean up as much as possible, whatever fails
    trap '' INT TERM
    trap - EXIT ERR
    if ((rc != 0 && INTERRUPTED == 0)); then
        local name # only this run's logs (an early failure must not show a previous run's)
        for name in ${NAMES[@]+"${NAMES[@]}"}; do
            [[ -f "$DEMO/$name.log" ]] || continue
            echo >&9
            echo "---- last 20 lines of .demo/$name.log ----" >&9
            tail -n 20 "$DEMO/$name.log" >&9
        done
    fi
    if [[ -n "$SLEEP_PID" ]]; then
        kill -TERM "$SLEEP_PID" 2>/dev/null || true
        wait "$SLEEP_PID" 2>/dev/null || true
    fi
    if ((${#PIDS[@]} > 0)); then
        echo "stopping the demo processes..." >&9
        stop_all
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'INTERRUPTED=1; echo >&9; echo "interrupted" >&9; exit 130' INT
trap 'INTERRUPTED=1; exit 143' TERM
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR

# ---------------------------------------------------------------------------------------------
# Prerequisites, ports
# ---------------------------------------------------------------------------------------------
for tool in cargo python3 curl od; do
    command -v "$tool" >/dev/null 2>&1 || fail "'$tool' is required but was not found on PATH"
done

# Only the demo's own settings below count: drop any PQMESH_* the caller's shell exports
# (e.g. a PQMESH_BOOTSTRAP_TOKEN or PQMESH_TRUST_DOMAIN would change what the demo does).
for var in $(compgen -e); do
    case "$var" in
        PQMESH_DEMO_PORT_BASE | PQMESH_LOG) ;;
        PQMESH_*) unset "$var" ;;
    esac
done

BASE=${PQMESH_DEMO_PORT_BASE:-17000}
[[ "$BASE" =~ ^[0-9]+$ ]] && ((10#$BASE >= 1024 && 10#$BASE <= 65000)) ||
    fail "PQMESH_DEMO_PORT_BASE must be a number between 1024 and 65000 (got '$BASE')"
BASE=$((10#$BASE))

HOST=127.0.0.1
CP_GRPC=$((BASE + 12)) CP_ADMIN=$((BASE + 14))
A_ADMIN=$((BASE + 100)) A_OUT=$((BASE + 101)) A_IN=$((BASE + 106)) A_APP=$((BASE + 180))
B_ADMIN=$((BASE + 200)) B_IN=$((BASE + 206)) B_APP=$((BASE + 280))
C_ADMIN=$((BASE + 300)) C_OUT=$((BASE + 301)) C_IN=$((BASE + 306)) C_APP=$((BASE + 380))
PORTS=(
    "$CP_GRPC:control plane gRPC" "$CP_ADMIN:control plane admin"
    "$A_ADMIN:sidecar A admin" "$A_OUT:sidecar A outbound" "$A_IN:sidecar A inbound"
    "$B_ADMIN:sidecar B admin" "$B_IN:sidecar B inbound" "$B_APP:workload B app"
    "$C_ADMIN:sidecar C admin" "$C_OUT:sidecar C outbound" "$C_IN:sidecar C inbound"
)

check_ports() {
    local busy
    # Binds like the real servers do (SO_REUSEADDR), so only a live socket counts as busy.
    busy=$(python3 - "$HOST" "${PORTS[@]}" <<'PY'
import socket, sys
host = sys.argv[1]
for entry in sys.argv[2:]:
    port, name = entry.split(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, int(port)))
        s.listen(1)
    except OSError as e:
        print(f"  {host}:{port} ({name}): {e.strerror}")
    finally:
        s.close()
PY
    ) || fail "could not check the ports with python3"
    if [[ -n "$busy" ]]; then
        echo "these ports are already in use:" >&2
        echo "$busy" >&2
        fail "port(s) in use; is another demo still running? Stop it, or pick other ports with PQMESH_DEMO_PORT_BASE=<n> (now $BASE)"
    fi
}
check_ports

# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
echo "== building pqmesh (cargo build --bins) =="
cargo build --bins || fail "cargo build --bins failed (see cargo's errors above)"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') ||
    fail "could not find cargo's target directory (cargo metadata failed)"
CP_BIN="$TARGET_DIR/debug/pqmesh-control-plane"
SIDECAR_BIN="$TARGET_DIR/debug/pqmesh-sidecar"
for bin in "$CP_BIN" "$SIDECAR_BIN"; do
    [[ -x "$bin" ]] || fail "expected binary $bin after the build, it is not there"
done

# ---------------------------------------------------------------------------------------------
# Fresh state: .demo/ with the control plane's directory and bootstrap tokens
# ---------------------------------------------------------------------------------------------
check_ports # again: something may have started during the build
rm -rf -- "$DEMO"
mkdir -m 700 "$DEMO"
CP_DIR="$DEMO/control-plane"
TOKENS_DIR="$DEMO/tokens"
mkdir -m 700 "$CP_DIR" "$TOKENS_DIR"
REQUESTS_FILE="$DEMO/app-b.requests"
: >"$REQUESTS_FILE"

TD=cluster.local
ID_A="spiffe://$TD/ns/shop/sa/web"
ID_B="spiffe://$TD/ns/shop/sa/api"
ID_C="spiffe://$TD/ns/shop/sa/intruder"

random_token() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }
(
    umask 077
    {
        echo "# written by deploy/local/demo.sh: bootstrap token -> workload identity"
        echo "tokens:"
        for sa in web api intruder; do
            token=$(random_token)
            [[ ${#token} -ge 32 ]] || exit 1
            printf '%s\n' "$token" >"$TOKENS_DIR/$sa.token"
            printf '  - token: "%s"\n    namespace: shop\n    serviceAccount: %s\n' "$token" "$sa"
        done
    } >"$CP_DIR/bootstrap-tokens.yaml"
) || fail "could not generate the bootstrap tokens from /dev/urandom"
chmod 600 "$CP_DIR/bootstrap-tokens.yaml" "$TOKENS_DIR"/*.token

if ((ML_DSA)); then KEY_ALG=ml-dsa-65; else KEY_ALG=ecdsa-p256; fi

# ---------------------------------------------------------------------------------------------
# Process helpers
# ---------------------------------------------------------------------------------------------
start() { # name command... (environment via `env` in the command)
    local name=$1
    shift
    # NO_COLOR: plain log files (the binaries colour their logs even when not on a terminal).
    NO_COLOR=1 "$@" >"$DEMO/$name.log" 2>&1 </dev/null 9>&- &
    PIDS+=("$!")
    NAMES+=("$name")
}

pid_of() {
    local i
    for i in "${!NAMES[@]}"; do
        [[ "${NAMES[$i]}" == "$1" ]] && { echo "${PIDS[$i]}"; return 0; }
    done
    return 1
}

http_get() { # url -> body on stdout; non-zero unless 2xx
    curl -fsS --noproxy '*' --max-time 3 "$1"
}

wait_ready() { # name url [extra file that must exist]
    local name=$1 url=$2 file=${3:-} pid deadline
    pid=$(pid_of "$name")
    deadline=$((SECONDS + 30))
    printf '  waiting for %-14s ' "$name"
    while :; do
        if http_get "$url" >/dev/null 2>&1 && [[ -z "$file" || -s "$file" ]]; then
            echo "ready"
            return 0
        fi
        if ! alive "$pid"; then
            echo "exited"
            fail "$name exited during start-up (see .demo/$name.log)"
        fi
        if ((SECONDS >= deadline)); then
            echo "timeout"
            fail "$name was not ready after 30 s ($url; see .demo/$name.log)"
        fi
        sleep 0.2
    done
}

# Prometheus text -> the numbers the demo needs, parsed with python3 (no jq needed).
metric_sum() { # url metric label=value... -> sum of the matching samples (0 if none)
    local text
    text=$(http_get "$1") || { echo 0; return 0; }
    shift
    python3 -c '
import re, sys
metric, want = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
total = 0.0
for line in sys.stdin:
    m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
    if not m or m.group(1) != metric:
        continue
    labels = dict(re.findall(r"(\w+)=\"((?:[^\"\\]|\\.)*)\"", m.group(2) or ""))
    if all(labels.get(k) == v for k, v in want.items()):
        total += float(m.group(3))
print(int(total))
' "$@" <<<"$text"
}

handshake() { # url direction -> "group<TAB>signature_scheme" of the most used non-zero series
    local text
    text=$(http_get "$1") || return 0
    python3 -c '
import re, sys
direction, best = sys.argv[1], None
for line in sys.stdin:
    m = re.match(r"^pqmesh_tls_handshakes_total\{(.*)\}\s+(\S+)", line)
    if not m:
        continue
    labels = dict(re.findall(r"(\w+)=\"((?:[^\"\\]|\\.)*)\"", m.group(1)))
    count = float(m.group(2))
    if labels.get("direction") == direction and count > 0 and (best is None or count > best[0]):
        best = (count, labels.get("group", ""), labels.get("signature_scheme", ""))
if best:
    print(best[1] + "\t" + best[2])
' "$2" <<<"$text"
}

cert_field() { # admin-base-url field -> .certificate.<field> from /config_dump ("" if absent)
    local text
    text=$(http_get "$1/config_dump") || return 0
    python3 -c '
import json, sys
cert = (json.load(sys.stdin) or {}).get("certificate") or {}
print(cert.get(sys.argv[1]) or "")
' "$2" <<<"$text" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Start everything
# ---------------------------------------------------------------------------------------------
echo
echo "== starting the control plane and three sidecars (state and logs in .demo/) =="
echo "  certificates: $KEY_ALG; ports from PQMESH_DEMO_PORT_BASE=$BASE"

start control-plane env \
    PQMESH_GRPC_ADDR="$HOST:$CP_GRPC" \
    PQMESH_ADMIN_ADDR="$HOST:$CP_ADMIN" \
    PQMESH_CA_KEY_ALG="$KEY_ALG" \
    PQMESH_LEAF_LIFETIME=1h \
    "$CP_BIN" --local "$CP_DIR"
wait_ready control-plane "http://$HOST:$CP_ADMIN/ready" "$CP_DIR/trust-bundle.pem"

start app-b python3 -u "$SCRIPT_DIR/hello_app.py" --port "$B_APP" --requests-file "$REQUESTS_FILE"

sidecar() { # name token-name admin inbound app allow [outbound peer-addr peer-id]
    local name=$1 token=$2 admin=$3 inbound=$4 app=$5 allow=$6
    # Without a peer the sidecar's outbound is transparent (iptables mode); keep it on a demo port.
    local outbound=(PQMESH_OUTBOUND_ADDR="$HOST:$((admin + 1))")
    if (($# > 6)); then
        outbound=(PQMESH_OUTBOUND_ADDR="$HOST:$7" PQMESH_OUTBOUND_PEER_ADDR="$8" PQMESH_OUTBOUND_PEER_ID="$9")
    fi
    start "$name" env \
        PQMESH_CONTROL_PLANE_ADDR="$HOST:$CP_GRPC" \
        PQMESH_TRUST_BUNDLE="$CP_DIR/trust-bundle.pem" \
        PQMESH_BOOTSTRAP_TOKEN_FILE="$TOKENS_DIR/$token.token" \
        PQMESH_KEY_ALG="$KEY_ALG" \
        PQMESH_ADMIN_ADDR="$HOST:$admin" \
        PQMESH_INBOUND_ADDR="$HOST:$inbound" \
        PQMESH_INBOUND_APP_ADDR="$HOST:$app" \
        PQMESH_INBOUND_ALLOW="$allow" \
        ${outbound[@]+"${outbound[@]}"} \
        "$SIDECAR_BIN"
}

# B: the server; only shop/web may come in.
sidecar sidecar-b api "$B_ADMIN" "$B_IN" "$B_APP" "$ID_A"
# A and C: clients in explicit mode (their own inbound refuses everybody: empty allow-list).
sidecar sidecar-a web "$A_ADMIN" "$A_IN" "$A_APP" "" "$A_OUT" "$HOST:$B_IN" "$ID_B"
sidecar sidecar-c intruder "$C_ADMIN" "$C_IN" "$C_APP" "" "$C_OUT" "$HOST:$B_IN" "$ID_B"

wait_ready app-b "http://$HOST:$B_APP/"
: >"$REQUESTS_FILE" # forget the readiness probe
wait_ready sidecar-b "http://$HOST:$B_ADMIN/ready"
wait_ready sidecar-a "http://$HOST:$A_ADMIN/ready"
wait_ready sidecar-c "http://$HOST:$C_ADMIN/ready"

count_requests() { wc -l <"$REQUESTS_FILE" | tr -d ' '; }

# ---------------------------------------------------------------------------------------------
# A -> B: allowed
# ---------------------------------------------------------------------------------------------
echo
echo "== A (shop/web) -> B (shop/api) =="
echo "\$ curl -sS --max-time 5 http://$HOST:$A_OUT/"
rc=0
RESPONSE=$(curl -sS --noproxy '*' --max-time 5 "http://$HOST:$A_OUT/") || rc=$?
printf '%s\n' "$RESPONSE"
((rc == 0)) || fail "the request from A through the mesh to B failed (curl exit code $rc)"
EXPECTED="hello from workload B (shop/api)"
[[ "$RESPONSE" == "$EXPECTED" ]] || fail "unexpected response from B: '$RESPONSE' (expected '$EXPECTED')"

HS=$(handshake "http://$HOST:$A_ADMIN/metrics" outbound)
GROUP=${HS%%$'\t'*}
SCHEME=${HS#*$'\t'}
[[ -n "$HS" ]] || fail "A's /metrics shows no completed outbound handshake (pqmesh_tls_handshakes_total)"
[[ "$GROUP" == X25519MLKEM768 ]] ||
    fail "the key exchange group was '$GROUP', expected X25519MLKEM768 (hybrid post-quantum)"
if ((ML_DSA)); then
    [[ "$SCHEME" == *ML-DSA* || "$SCHEME" == *ml_dsa* || "$SCHEME" == *mldsa* ]] ||
        fail "--ml-dsa: B's certificate signature scheme was '$SCHEME', expected ML-DSA-65"
fi

SPIFFE_A=$(cert_field "http://$HOST:$A_ADMIN" spiffe_id)
SPIFFE_B=$(cert_field "http://$HOST:$B_ADMIN" spiffe_id)
EXPIRY_A=$(cert_field "http://$HOST:$A_ADMIN" not_after_rfc3339)
EXPIRY_B=$(cert_field "http://$HOST:$B_ADMIN" not_after_rfc3339)
[[ -n "$SPIFFE_A" ]] || fail "A's /config_dump has no certificate SPIFFE ID"
[[ -n "$SPIFFE_B" ]] || fail "B's /config_dump has no certificate SPIFFE ID"
[[ "$SPIFFE_A" == "$ID_A" ]] || fail "A's certificate is for '$SPIFFE_A', expected $ID_A"
[[ "$SPIFFE_B" == "$ID_B" ]] || fail "B's certificate is for '$SPIFFE_B', expected $ID_B"

APP_REQUESTS_AFTER_A=$(count_requests)
((APP_REQUESTS_AFTER_A >= 1)) || fail "B's app has no record of A's request"

# ---------------------------------------------------------------------------------------------
# C -> B: refused
# ---------------------------------------------------------------------------------------------
echo
echo "== C (shop/intruder) -> B (shop/api): should be refused =="
DENIED_BEFORE=$(metric_sum "http://$HOST:$B_ADMIN/metrics" pqmesh_connections_total direction=inbound outcome=denied_identity)
echo "\$ curl -sS --max-time 5 http://$HOST:$C_OUT/"
rc=0
C_RESPONSE=$(curl -sS --noproxy '*' --max-time 5 "http://$HOST:$C_OUT/" 2>"$DEMO/curl-c.err") || rc=$?
if ((rc != 0)); then
    echo "$(tr -s "\n" " " <"$DEMO/curl-c.err")(curl exit code $rc)"
elif [[ -z "$C_RESPONSE" ]]; then
    echo "(empty response)"
else
    printf '%s\n' "$C_RESPONSE"
    fail "C's request reached B's app: it got '$C_RESPONSE'"
fi

DENIED=0
deadline=$((SECONDS + 5))
while :; do
    DENIED=$(metric_sum "http://$HOST:$B_ADMIN/metrics" pqmesh_connections_total direction=inbound outcome=denied_identity)
    ((DENIED > DENIED_BEFORE)) && break
    ((SECONDS >= deadline)) &&
        fail "B's /metrics does not show C's connection as denied (pqmesh_connections_total{direction=\"inbound\",outcome=\"denied_identity\"} = $DENIED)"
    sleep 0.2
done
sleep 0.3 # a request that got through would have been logged by now
APP_REQUESTS_AFTER_C=$(count_requests)
((APP_REQUESTS_AFTER_C == APP_REQUESTS_AFTER_A)) ||
    fail "B's app saw $((APP_REQUESTS_AFTER_C - APP_REQUESTS_AFTER_A)) request(s) from C; it should have seen none"

# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
echo
echo "== pqmesh demo: A (shop/web) -> B (shop/api) over hybrid post-quantum mTLS =="
echo "response from B via the sidecars: $RESPONSE"
printf '%-22s%-24s(from A'"'"'s metrics)\n' "key exchange group:" "$GROUP"
printf '%-22s%s\n' "signature scheme:" "$SCHEME"
printf '%-22s%s\n' "client identity (A):" "$SPIFFE_A"
printf '%-22s%s\n' "server identity (B):" "$SPIFFE_B"
echo "A's certificate expires: $EXPIRY_A   B's certificate expires: $EXPIRY_B"
echo "C ($ID_C) -> B: REFUSED (B's sidecar denied the identity; B's app saw nothing)"
echo "  B: pqmesh_connections_total{direction=\"inbound\",outcome=\"denied_identity\"} $DENIED; B's app served $APP_REQUESTS_AFTER_C request(s), all from A"
echo
echo "demo OK"

if ((KEEP_RUNNING)); then
    cat <<EOF

Everything keeps running until you press Ctrl-C. Try:
  curl http://$HOST:$A_OUT/                 # A -> B through the mesh: allowed
  curl http://$HOST:$C_OUT/                 # C -> B: refused by B's sidecar
admin endpoints (/ready /live /metrics /config_dump):
  control plane  http://$HOST:$CP_ADMIN/metrics
  sidecar A      http://$HOST:$A_ADMIN/metrics   http://$HOST:$A_ADMIN/config_dump
  sidecar B      http://$HOST:$B_ADMIN/metrics   http://$HOST:$B_ADMIN/config_dump
  sidecar C      http://$HOST:$C_ADMIN/metrics   http://$HOST:$C_ADMIN/config_dump
logs: .demo/*.log
EOF
    while :; do
        for i in "${!PIDS[@]}"; do
            alive "${PIDS[$i]}" || fail "${NAMES[$i]} exited unexpectedly (see .demo/${NAMES[$i]}.log)"
        done
        sleep 1 &
        SLEEP_PID=$!
        wait "$SLEEP_PID" || true
        SLEEP_PID=
    done
fi
