#!/usr/bin/env bash
# pqmesh local demo: a control plane and three meshed workloads.
#
#   A (shop/web)      ---->  B (shop/api)   allowed: B's sidecar lets only shop/web in
#   C (shop/intruder) ---->  B (shop/api)   refused: wrong identity
#
# Two modes:
#   network-namespace mode (the default as root): every workload is a "pod" like in Kubernetes:
#     a network namespace with its own IP on a private bridge, the iptables rules of
#     `pqmesh-sidecar init`, a sidecar running as UID 1337 and an app running as another UID.
#     The apps know nothing about the mesh: A's app simply does `curl http://<B's pod IP>:8080/`,
#     iptables hands that connection to A's sidecar, and B's sidecar hands it to B's app with
#     the caller's SPIFFE ID in the x-pqmesh-peer-identity header.
#   loopback mode (not root, --loopback, or network namespaces unavailable): everything on
#     127.0.0.1, sidecars in explicit mode (A's outbound listener forwards to B's inbound with a
#     configured peer ID), no iptables.
#
# Logs are written to .demo/ at the repository root (recreated on every run). Everything the
# demo starts or creates (processes, namespaces, links) is stopped and removed when it ends,
# fails or is interrupted. Run with --help for the options.
set -Eeuo pipefail

usage() {
    cat <<'EOF'
usage: deploy/local/demo.sh [--loopback] [--keep-running] [--ml-dsa] [--help]

Builds pqmesh (cargo build --bins), starts a control plane and three workloads with sidecars,
sends one HTTP request from workload A (shop/web) to workload B (shop/api) over hybrid
post-quantum mTLS, shows that workload C (shop/intruder) is refused by B's sidecar, prints a
summary and stops everything again. Exits 0 only if all checks pass.

modes:
  as root (default)  network-namespace mode: pods A, B and C and the control plane each get a
                     network namespace (pqmesh-demo-<pid>-*) on a private bridge (itself in a
                     namespace: nothing is added to the host's network namespace).
                     `pqmesh-sidecar init` installs the iptables interception rules in each pod,
                     the sidecars run as UID 1337, the apps as UID 1000, and A's unmodified app
                     calls http://<B's pod IP>:8080/.
  otherwise          loopback mode: everything on 127.0.0.1 with explicit sidecar ports (A's
                     outbound listener is configured with B's address and identity), no
                     iptables interception. Used when not root, with --loopback, or when
                     network namespaces or iptables do not work here (the reason is printed).

options:
  --loopback      loopback mode even as root
  --keep-running  keep everything running after the summary, until Ctrl-C
  --ml-dsa        ML-DSA-65 certificates: PQMESH_CA_KEY_ALG=ml-dsa-65 for the control plane
                  and PQMESH_KEY_ALG=ml-dsa-65 for every sidecar (default: ECDSA P-256)
  -h, --help      show this help

environment:
  PQMESH_DEMO_PORT_BASE      loopback mode: base port (default 17000). The demo uses base+12 and
                             base+14 (control plane), base+100..106 (A), base+200..280 (B) and
                             base+300..306 (C), all on 127.0.0.1.
  PQMESH_DEMO_APP_UID        network-namespace mode: UID the apps run as (default 1000)
  PQMESH_DEMO_FORCE_NONROOT  =1: decide the mode as if not root (tests the loopback fallback)
  PQMESH_LOG                 log filter for the pqmesh processes (default info)

State and logs: .demo/ at the repository root (.demo/<process>.log).
EOF
}

KEEP_RUNNING=0
ML_DSA=0
FORCE_LOOPBACK=0
for arg in "$@"; do
    case "$arg" in
        --keep-running) KEEP_RUNNING=1 ;;
        --ml-dsa) ML_DSA=1 ;;
        --loopback) FORCE_LOOPBACK=1 ;;
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
MODE=         # netns | loopback
NS_PREFIX="pqmesh-demo-$$" # every network namespace of this run is $NS_PREFIX-<name>
NETNS_USED=0  # this run created (or tried to create) network namespaces
RUN_DIR=      # netns mode: files the pods' processes read (binaries, tokens, trust bundles)
BUILD_PID=    # the running `cargo build`
DEMO_CREATED=0 # this run created .demo/

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

our_namespaces() { # the network namespaces named $NS_PREFIX-* (only this run uses the prefix)
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NS_PREFIX-" || true
}

delete_namespaces() {
    local nss=() ns p i busy
    mapfile -t nss < <(our_namespaces)
    ((${#nss[@]} > 0)) || return 0
    # Every process this run started was stopped by stop_all; this is the backstop.
    for ns in "${nss[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
    done
    for i in $(seq 30); do
        busy=0
        for ns in "${nss[@]}"; do [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] || busy=1; done
        ((busy)) || break
        sleep 0.1
    done
    for ns in "${nss[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        # Deleting a namespace deletes its links too (the bridge, every veth pair).
        ip netns del "$ns" 2>/dev/null || echo "WARNING: could not delete network namespace $ns" >&9
    done
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
    if [[ -n "$BUILD_PID" ]]; then
        kill -TERM "$BUILD_PID" 2>/dev/null || true
        wait "$BUILD_PID" 2>/dev/null || true
    fi
    if [[ -n "$SLEEP_PID" ]]; then
        kill -TERM "$SLEEP_PID" 2>/dev/null || true
        wait "$SLEEP_PID" 2>/dev/null || true
    fi
    if ((${#PIDS[@]} > 0)); then
        echo "stopping the demo processes..." >&9
        stop_all
    fi
    if ((NETNS_USED)); then
        [[ -z "$(our_namespaces)" ]] || echo "removing the network namespaces $NS_PREFIX-*..." >&9
        delete_namespaces
    fi
    [[ -z "$RUN_DIR" ]] || rm -rf -- "$RUN_DIR"
    # Run with sudo from a user's checkout: leave .demo/ to the checkout's owner, so that a later
    # run without root can replace it.
    if ((DEMO_CREATED)) && [[ "$(id -u)" == 0 && -d "$DEMO" ]]; then
        chown -R "$(stat -c %u:%g "$ROOT")" "$DEMO" 2>/dev/null
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'INTERRUPTED=1; echo >&9; echo "interrupted" >&9; exit 130' INT
trap 'INTERRUPTED=1; exit 143' TERM
on_err() { # line command
    # In a subshell (a command substitution), only say what failed: the main shell then fails
    # too, and reports once.
    if [[ "$BASHPID" != "$$" ]]; then
        echo "  (line $1 failed: $2)" >&9
        exit 1
    fi
    fail "command failed (line $1): $2"
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR

# ---------------------------------------------------------------------------------------------
# Mode: network namespaces when root and they work, else loopback (saying why, first thing)
# ---------------------------------------------------------------------------------------------
APP_UID=${PQMESH_DEMO_APP_UID:-1000}
PROXY_UID=1337 # the UID `pqmesh-sidecar init` exempts from interception (its default)
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The pods' python3 and curl: from the system directories first (a python3 under root's home, such
# as a pyenv shim, cannot be run by the app user).
pod_tool() { (PATH="$CLEAN_PATH:$PATH" && command -v "$1") || true; }

NETNS_WHY=
netns_usable() { # 0 if the namespace demo can run here; else 1 with the reason in NETNS_WHY
    local tool out probe="$NS_PREFIX-probe"
    for tool in ip iptables iptables-restore iptables-save setpriv curl python3; do
        command -v "$tool" >/dev/null 2>&1 || { NETNS_WHY="'$tool' not found"; return 1; }
    done
    [[ "$APP_UID" =~ ^[0-9]+$ && "$APP_UID" != 0 && "$APP_UID" != "$PROXY_UID" ]] ||
        { NETNS_WHY="PQMESH_DEMO_APP_UID must be a UID other than 0 and $PROXY_UID (got '$APP_UID')"; return 1; }
    NETNS_USED=1
    delete_namespaces # a namespace with this run's prefix can only be a dead run's leftover
    if ! out=$(ip netns add "$probe" 2>&1); then
        NETNS_WHY="ip netns add: ${out:-failed}"
        return 1
    fi
    if ! out=$({ ip -n "$probe" link set lo up && ip -n "$probe" link add br0 type bridge &&
        ip netns exec "$probe" iptables -t nat -S; } 2>&1 >/dev/null); then
        NETNS_WHY="bridge or iptables unusable in a network namespace: $(tr -s '\n' ' ' <<<"${out:-failed}")"
        ip netns del "$probe" 2>/dev/null
        return 1
    fi
    ip netns del "$probe" 2>/dev/null || true
    local py curl_bin
    py=$(pod_tool python3) curl_bin=$(pod_tool curl)
    if ! setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups \
        env -i PATH="$CLEAN_PATH" "$py" -c pass >/dev/null 2>&1 ||
        ! setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups \
            env -i PATH="$CLEAN_PATH" "$curl_bin" -V >/dev/null 2>&1; then
        NETNS_WHY="UID $APP_UID cannot run $py and $curl_bin (set PQMESH_DEMO_APP_UID)"
        return 1
    fi
    return 0
}

LOOPBACK_WHAT="running the loopback demo (explicit sidecar ports, no iptables interception)"
IS_ROOT=0
[[ "$(id -u)" != 0 ]] || IS_ROOT=1
NONROOT_NOTE=""
if [[ "${PQMESH_DEMO_FORCE_NONROOT:-}" == 1 ]]; then
    IS_ROOT=0
    NONROOT_NOTE=" (PQMESH_DEMO_FORCE_NONROOT=1)"
fi
if ((FORCE_LOOPBACK)); then
    MODE=loopback
    echo "--loopback: $LOOPBACK_WHAT"
elif ((!IS_ROOT)); then
    MODE=loopback
    echo "not root$NONROOT_NOTE: $LOOPBACK_WHAT; run as root for the network-namespace demo"
elif ! netns_usable; then
    MODE=loopback
    echo "network namespaces unavailable ($NETNS_WHY): $LOOPBACK_WHAT"
else
    MODE=netns
    echo "root: running the network-namespace demo (pods with iptables interception; --loopback for the 127.0.0.1 demo)"
fi

# ---------------------------------------------------------------------------------------------
# One demo per checkout (they would share .demo/), then prerequisites and ports
# ---------------------------------------------------------------------------------------------
# A lock on the checkout's directory, held on fd 8 until this script exits (the processes it
# starts do not inherit fd 8).
if command -v flock >/dev/null 2>&1 && { exec 8<"$ROOT"; } 2>/dev/null; then
    flock -n 8 || fail "another deploy/local/demo.sh is running in this checkout (it would share .demo/); stop it or wait for it to finish"
fi
for tool in cargo python3 curl od; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        hint=""
        [[ "$tool" != cargo || -z "${SUDO_USER:-}" ]] ||
            hint=" (under sudo, PATH is reset: try sudo env \"PATH=\$PATH\" $0)"
        fail "'$tool' is required but was not found on PATH$hint"
    fi
done
PY=$(pod_tool python3)
CURL=$(pod_tool curl)

# Only the demo's own settings below count: drop any PQMESH_* the caller's shell exports
# (e.g. a PQMESH_BOOTSTRAP_TOKEN or PQMESH_TRUST_DOMAIN would change what the demo does).
for var in $(compgen -e); do
    case "$var" in
        PQMESH_DEMO_PORT_BASE | PQMESH_DEMO_APP_UID | PQMESH_DEMO_FORCE_NONROOT | PQMESH_LOG) ;;
        PQMESH_*) unset "$var" ;;
    esac
done

HOST=127.0.0.1
if [[ "$MODE" == loopback ]]; then
    BASE=${PQMESH_DEMO_PORT_BASE:-17000}
    [[ "$BASE" =~ ^[0-9]+$ ]] && ((10#$BASE >= 1024 && 10#$BASE <= 65000)) ||
        fail "PQMESH_DEMO_PORT_BASE must be a number between 1024 and 65000 (got '$BASE')"
    BASE=$((10#$BASE))
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
else
    # Network-namespace mode: the ports are the sidecar's defaults inside each pod (admin 15000,
    # outbound 15001, inbound 15006), the control plane's in its own namespace; nothing to check.
    NET=10.213.99 # the pods' subnet; it only exists on this run's own bridge
    IP_CP=$NET.2 IP_A=$NET.11 IP_B=$NET.12 IP_C=$NET.13
    NS_SW=$NS_PREFIX-sw NS_CP=$NS_PREFIX-cp NS_A=$NS_PREFIX-a NS_B=$NS_PREFIX-b NS_C=$NS_PREFIX-c
    APP_PORT=8080
fi

check_ports() {
    [[ "$MODE" == loopback ]] || return 0
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
# In the background, waited for: a signal interrupts `wait` at once, while a foreground cargo
# (e.g. blocked on another build's lock) would delay the INT/TERM traps until it finished.
cargo build --bins 8<&- 9>&- &
BUILD_PID=$!
wait "$BUILD_PID" || fail "cargo build --bins failed (see cargo's errors above)"
BUILD_PID=
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
if [[ -e "$DEMO" ]]; then
    rm -rf -- "$DEMO" 2>/dev/null ||
        fail "cannot remove the previous run's $DEMO (left by a run as another user, e.g. root?): remove it and try again"
fi
mkdir -m 700 "$DEMO"
DEMO_CREATED=1
CP_DIR="$DEMO/control-plane"
TOKENS_DIR="$DEMO/tokens"
mkdir -m 700 "$CP_DIR" "$TOKENS_DIR"

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
    NO_COLOR=1 "$@" >"$DEMO/$name.log" 2>&1 </dev/null 8<&- 9>&- &
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

# Network-namespace mode: commands inside a pod, with a clean environment.
BASE_ENV=(PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1)
[[ -z "${PQMESH_LOG:-}" ]] || BASE_ENV+=(PQMESH_LOG="$PQMESH_LOG")
in_ns() { # ns command... (as root)
    local ns=$1
    shift
    ip netns exec "$ns" env -i "${BASE_ENV[@]}" "$@"
}
as_uid() { # ns uid command... (no capabilities, no supplementary groups)
    local ns=$1 uid=$2
    shift 2
    ip netns exec "$ns" setpriv --reuid "$uid" --regid "$uid" --clear-groups --inh-caps=-all \
        env -i "${BASE_ENV[@]}" "$@"
}

admin_get() { # cp|a|b|c path -> the admin endpoint's body; non-zero unless 2xx
    local port ns
    if [[ "$MODE" == netns ]]; then
        case "$1" in
            cp) ns=$NS_CP port=15014 ;;
            a) ns=$NS_A port=15000 ;;
            b) ns=$NS_B port=15000 ;;
            c) ns=$NS_C port=15000 ;;
        esac
        # The admin listeners are on 127.0.0.1 inside each pod (never intercepted).
        in_ns "$ns" "$CURL" -fsS --max-time 3 "http://127.0.0.1:$port$2"
    else
        case "$1" in
            cp) port=$CP_ADMIN ;;
            a) port=$A_ADMIN ;;
            b) port=$B_ADMIN ;;
            c) port=$C_ADMIN ;;
        esac
        http_get "http://$HOST:$port$2"
    fi
}

wait_ready() { # name what-for file-that-must-exist-or-"" probe-command...
    local name=$1 what=$2 file=$3 pid deadline
    shift 3
    pid=$(pid_of "$name")
    deadline=$((SECONDS + 30))
    printf '  waiting for %-14s ' "$name"
    while :; do
        if "$@" >/dev/null 2>&1 && [[ -z "$file" || -s "$file" ]]; then
            echo "ready"
            return 0
        fi
        if ! alive "$pid"; then
            echo "exited"
            fail "$name exited during start-up (see .demo/$name.log)"
        fi
        if ((SECONDS >= deadline)); then
            echo "timeout"
            fail "$name was not ready after 30 s ($what; see .demo/$name.log)"
        fi
        sleep 0.2
    done
}

# Prometheus text -> the numbers the demo needs, parsed with python3 (no jq needed).
metric_sum() { # cp|a|b|c metric label=value... -> sum of the matching samples (0 if none)
    local text
    text=$(admin_get "$1" /metrics) || { echo 0; return 0; }
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

handshake() { # a|b|c direction -> "group<TAB>signature_scheme" of the most used non-zero series
    local text
    text=$(admin_get "$1" /metrics) || return 0
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

cert_field() { # a|b|c field -> .certificate.<field> from /config_dump ("" if absent)
    local text
    text=$(admin_get "$1" /config_dump) || return 0
    python3 -c '
import json, sys
cert = (json.load(sys.stdin) or {}).get("certificate") or {}
print(cert.get(sys.argv[1]) or "")
' "$2" <<<"$text" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Start everything: loopback mode
# ---------------------------------------------------------------------------------------------
start_loopback() {
    echo
    echo "== starting the control plane and three sidecars on $HOST (state and logs in .demo/) =="
    echo "  certificates: $KEY_ALG; ports from PQMESH_DEMO_PORT_BASE=$BASE"
    REQUESTS_FILE="$DEMO/app-b.requests"
    : >"$REQUESTS_FILE"

    start control-plane env \
        PQMESH_GRPC_ADDR="$HOST:$CP_GRPC" \
        PQMESH_ADMIN_ADDR="$HOST:$CP_ADMIN" \
        PQMESH_CA_KEY_ALG="$KEY_ALG" \
        PQMESH_LEAF_LIFETIME=1h \
        "$CP_BIN" --local "$CP_DIR"
    wait_ready control-plane "http://$HOST:$CP_ADMIN/ready" "$CP_DIR/trust-bundle.pem" \
        admin_get cp /ready

    start app-b python3 -u "$SCRIPT_DIR/hello_app.py" --port "$B_APP" --requests-file "$REQUESTS_FILE"

    # B: the server; only shop/web may come in.
    loopback_sidecar sidecar-b api "$B_ADMIN" "$B_IN" "$B_APP" "$ID_A"
    # A and C: clients in explicit mode (their own inbound refuses everybody: empty allow-list).
    loopback_sidecar sidecar-a web "$A_ADMIN" "$A_IN" "$A_APP" "" "$A_OUT" "$HOST:$B_IN" "$ID_B"
    loopback_sidecar sidecar-c intruder "$C_ADMIN" "$C_IN" "$C_APP" "" "$C_OUT" "$HOST:$B_IN" "$ID_B"

    wait_ready app-b "http://$HOST:$B_APP/" "" http_get "http://$HOST:$B_APP/"
    : >"$REQUESTS_FILE" # forget the readiness probe
    wait_ready sidecar-b "http://$HOST:$B_ADMIN/ready" "" admin_get b /ready
    wait_ready sidecar-a "http://$HOST:$A_ADMIN/ready" "" admin_get a /ready
    wait_ready sidecar-c "http://$HOST:$C_ADMIN/ready" "" admin_get c /ready

    A_SHOW="curl -sS --max-time 5 http://$HOST:$A_OUT/"
    A_WHERE="A's app talks to its sidecar's outbound port; the sidecar is configured with B's address and identity"
    C_SHOW="curl -sS --max-time 5 http://$HOST:$C_OUT/"
}

loopback_sidecar() { # name token-name admin inbound app allow [outbound peer-addr peer-id]
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

a_request() { curl -sS --noproxy '*' --max-time 5 "http://$HOST:$A_OUT/"; }
c_request() { curl -sS --noproxy '*' --max-time 5 "http://$HOST:$C_OUT/"; }

# ---------------------------------------------------------------------------------------------
# Start everything: network-namespace mode
# ---------------------------------------------------------------------------------------------
start_netns() {
    # Files the pods' processes need, readable by the sidecar (UID 1337) and app (UID
    # $APP_UID) users wherever the checkout is; removed at exit. The binaries are a snapshot,
    # so a rebuild during the run cannot swap them.
    RUN_DIR=$(mktemp -d "/tmp/$NS_PREFIX.XXXXXX") || fail "cannot create a directory under /tmp"
    chmod 0755 "$RUN_DIR"
    BIN="$RUN_DIR/bin"
    mkdir -m 0755 "$BIN" "$RUN_DIR/pod-a" "$RUN_DIR/pod-b" "$RUN_DIR/pod-c"
    cp "$CP_BIN" "$SIDECAR_BIN" "$SCRIPT_DIR/hello_app.py" "$BIN/"
    chmod 0755 "$BIN"/*

    echo
    echo "== pods: network namespaces on a private bridge (state and logs in .demo/) =="
    NETNS_USED=1
    local ns
    for ns in "$NS_SW" "$NS_CP" "$NS_A" "$NS_B" "$NS_C"; do
        ip netns add "$ns" 2>"$DEMO/netns.err" ||
            fail "cannot create network namespace $ns: $(cat "$DEMO/netns.err")"
        ip -n "$ns" link set lo up
    done
    # The bridge lives in a namespace of its own, so bridged traffic never meets the host's
    # firewall (bridge-nf-call-iptables) and nothing is added to the host's network namespace.
    ip -n "$NS_SW" link add br0 type bridge
    ip -n "$NS_SW" link set br0 up
    attach() { # ns ip leg
        ip -n "$NS_SW" link add "$3" type veth peer name eth0 netns "$1" ||
            fail "cannot create the veth pair $3 <-> $1/eth0"
        ip -n "$NS_SW" link set "$3" master br0 up
        ip -n "$1" addr add "$2/24" dev eth0
        ip -n "$1" link set eth0 up
    }
    attach "$NS_CP" "$IP_CP" veth-cp
    attach "$NS_A" "$IP_A" veth-a
    attach "$NS_B" "$IP_B" veth-b
    attach "$NS_C" "$IP_C" veth-c
    printf '  %-14s %-22s %-12s %s\n' \
        "pod A" "$NS_A" "$IP_A" "shop/web: sidecar (UID $PROXY_UID), app = curl (UID $APP_UID)" \
        "pod B" "$NS_B" "$IP_B" "shop/api: sidecar, hello app on :$APP_PORT (UID $APP_UID); admits only shop/web" \
        "pod C" "$NS_C" "$IP_C" "shop/intruder: sidecar, app = curl (UID $APP_UID)" \
        "control plane" "$NS_CP" "$IP_CP" "gRPC :15012, admin 127.0.0.1:15014"
    echo "  bridge br0 in $NS_SW; certificates: $KEY_ALG"

    # The control plane learns which pod IP is which identity from endpoints.yaml (in a cluster
    # it would watch the pods).
    (
        umask 077
        cat >"$CP_DIR/endpoints.yaml" <<EOF
# written by deploy/local/demo.sh: pod IP -> workload identity
endpoints:
  - ip: $IP_A
    namespace: shop
    serviceAccount: web
  - ip: $IP_B
    namespace: shop
    serviceAccount: api
  - ip: $IP_C
    namespace: shop
    serviceAccount: intruder
EOF
    )
    start control-plane ip netns exec "$NS_CP" env -i "${BASE_ENV[@]}" \
        PQMESH_GRPC_ADDR="$IP_CP:15012" \
        PQMESH_ADMIN_ADDR=127.0.0.1:15014 \
        PQMESH_CA_KEY_ALG="$KEY_ALG" \
        PQMESH_LEAF_LIFETIME=1h \
        "$BIN/pqmesh-control-plane" --local "$CP_DIR"

    echo
    echo "== pqmesh-sidecar init in each pod (a pod's init container): iptables nat rules =="
    echo "  \$ pqmesh-sidecar init --dry-run   (the rules, as root in pod A)"
    in_ns "$NS_A" "$BIN/pqmesh-sidecar" init --dry-run >"$DEMO/init-dry-run.txt" 2>&1 ||
        { cat "$DEMO/init-dry-run.txt" >&2; fail "pqmesh-sidecar init --dry-run failed"; }
    grep -E '^-A |^# unless' "$DEMO/init-dry-run.txt" | sed -e 's/^# unless already present: /jump (once): /' -e 's/^/  | /'
    local pod
    for pod in a b c; do
        ns="$NS_PREFIX-$pod"
        in_ns "$ns" "$BIN/pqmesh-sidecar" init >"$DEMO/init-$pod.log" 2>&1 ||
            { cat "$DEMO/init-$pod.log" >&2; fail "pqmesh-sidecar init failed in $ns"; }
        echo "  pod ${pod^^}: $(tr -s '\n' ' ' <"$DEMO/init-$pod.log" | sed 's/ *$//')"
    done

    echo
    echo "== starting the control plane, B's app and the three sidecars =="
    wait_ready control-plane "http://127.0.0.1:15014/ready in $NS_CP" "$CP_DIR/trust-bundle.pem" \
        admin_get cp /ready

    # Per pod: a world-readable copy of the trust bundle, a token only the sidecar user can read.
    local sa
    for pod in a b c; do
        case "$pod" in a) sa=web ;; b) sa=api ;; c) sa=intruder ;; esac
        cp "$CP_DIR/trust-bundle.pem" "$RUN_DIR/pod-$pod/trust-bundle.pem"
        chmod 0644 "$RUN_DIR/pod-$pod/trust-bundle.pem"
        cp "$TOKENS_DIR/$sa.token" "$RUN_DIR/pod-$pod/token"
        chown "$PROXY_UID:$PROXY_UID" "$RUN_DIR/pod-$pod/token"
        chmod 0400 "$RUN_DIR/pod-$pod/token"
    done
    REQUESTS_FILE="$RUN_DIR/pod-b/app-b.requests"
    : >"$REQUESTS_FILE"
    chown "$APP_UID:$APP_UID" "$REQUESTS_FILE"

    # B's app listens on all its pod's addresses, like any containerised server.
    start app-b ip netns exec "$NS_B" setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups \
        --inh-caps=-all env -i "${BASE_ENV[@]}" \
        "$PY" -u "$BIN/hello_app.py" --host 0.0.0.0 --port "$APP_PORT" --requests-file "$REQUESTS_FILE"
    # Transparent mode: no PQMESH_OUTBOUND_PEER_ADDR and no PQMESH_INBOUND_APP_ADDR; the
    # sidecars use their default ports and learn where a connection was going from iptables.
    # Their identities come from the bootstrap tokens; the argument is who may come in.
    netns_sidecar a ""      # A and C admit nobody inbound (empty allow-list)
    netns_sidecar b "$ID_A" # B admits only shop/web
    netns_sidecar c ""

    wait_ready app-b "http://127.0.0.1:$APP_PORT/ in $NS_B" "" \
        in_ns "$NS_B" "$CURL" -fsS --max-time 2 "http://127.0.0.1:$APP_PORT/"
    : >"$REQUESTS_FILE" # forget the readiness probe
    for pod in b a c; do
        wait_ready "sidecar-$pod" "http://127.0.0.1:15000/ready in $NS_PREFIX-$pod" "" admin_get "$pod" /ready
    done

    A_SHOW="curl -sS --max-time 5 http://$IP_B:$APP_PORT/"
    A_WHERE="A's app, UID $APP_UID in $NS_A, calls B's pod IP and app port: no sidecar address, no proxy settings"
    C_SHOW="curl -sS --max-time 5 http://$IP_B:$APP_PORT/   (C's app, UID $APP_UID in $NS_C)"
}

netns_sidecar() { # pod allow-list
    local pod=$1 ns="$NS_PREFIX-$1"
    # (started with `ip netns exec` directly, not through a shell function, so that the PID
    # recorded is the sidecar's own: every exec'ing wrapper replaces itself)
    start "sidecar-$pod" ip netns exec "$ns" setpriv --reuid "$PROXY_UID" --regid "$PROXY_UID" \
        --clear-groups --inh-caps=-all env -i "${BASE_ENV[@]}" \
        PQMESH_CONTROL_PLANE_ADDR="$IP_CP:15012" \
        PQMESH_TRUST_BUNDLE="$RUN_DIR/pod-$pod/trust-bundle.pem" \
        PQMESH_BOOTSTRAP_TOKEN_FILE="$RUN_DIR/pod-$pod/token" \
        PQMESH_KEY_ALG="$KEY_ALG" \
        PQMESH_INBOUND_ALLOW="$2" \
        "$BIN/pqmesh-sidecar"
}

if [[ "$MODE" == netns ]]; then
    a_request() { as_uid "$NS_A" "$APP_UID" "$CURL" -sS --max-time 5 "http://$IP_B:$APP_PORT/"; }
    c_request() { as_uid "$NS_C" "$APP_UID" "$CURL" -sS --max-time 5 "http://$IP_B:$APP_PORT/"; }
fi

redirected() { # pod chain port -> connections the chain's REDIRECT --to-ports <port> rule took
    # (nat rules see only a connection's first packet: packets = connections)
    in_ns "$NS_PREFIX-$1" iptables-save -c -t nat | awk -v chain="$2" -v port="$3" '
        $2 == "-A" && $3 == chain && / -j REDIRECT / && $NF == port && !/--uid-owner/ {
            counters = $1; gsub(/[\[\]]/, "", counters); split(counters, c, ":"); n += c[1]
        }
        END { print n + 0 }'
}

if [[ "$MODE" == netns ]]; then start_netns; else start_loopback; fi

count_requests() { wc -l <"$REQUESTS_FILE" | tr -d ' '; }

# ---------------------------------------------------------------------------------------------
# A -> B: allowed
# ---------------------------------------------------------------------------------------------
echo
echo "== A (shop/web) -> B (shop/api) =="
echo "  ($A_WHERE)"
echo "\$ $A_SHOW"
rc=0
RESPONSE=$(a_request) || rc=$?
printf '%s\n' "$RESPONSE"
((rc == 0)) || fail "the request from A through the mesh to B failed (curl exit code $rc)"
EXPECTED="hello from workload B (shop/api); caller: $ID_A"
[[ "$RESPONSE" == "$EXPECTED" ]] || fail "unexpected response from B: '$RESPONSE' (expected '$EXPECTED')"

HS=$(handshake a outbound)
GROUP=${HS%%$'\t'*}
SCHEME=${HS#*$'\t'}
[[ -n "$HS" ]] || fail "A's /metrics shows no completed outbound handshake (pqmesh_tls_handshakes_total)"
[[ "$GROUP" == X25519MLKEM768 ]] ||
    fail "the key exchange group was '$GROUP', expected X25519MLKEM768 (hybrid post-quantum)"
if ((ML_DSA)); then
    [[ "$SCHEME" == *ML-DSA* || "$SCHEME" == *ml_dsa* || "$SCHEME" == *mldsa* ]] ||
        fail "--ml-dsa: B's certificate signature scheme was '$SCHEME', expected ML-DSA-65"
fi

SPIFFE_A=$(cert_field a spiffe_id)
SPIFFE_B=$(cert_field b spiffe_id)
EXPIRY_A=$(cert_field a not_after_rfc3339)
EXPIRY_B=$(cert_field b not_after_rfc3339)
[[ -n "$SPIFFE_A" ]] || fail "A's /config_dump has no certificate SPIFFE ID"
[[ -n "$SPIFFE_B" ]] || fail "B's /config_dump has no certificate SPIFFE ID"
[[ "$SPIFFE_A" == "$ID_A" ]] || fail "A's certificate is for '$SPIFFE_A', expected $ID_A"
[[ "$SPIFFE_B" == "$ID_B" ]] || fail "B's certificate is for '$SPIFFE_B', expected $ID_B"

APP_REQUESTS_AFTER_A=$(count_requests)
((APP_REQUESTS_AFTER_A >= 1)) || fail "B's app has no record of A's request"

ESTABLISHED_A=$(metric_sum a pqmesh_connections_total direction=outbound outcome=established)
((ESTABLISHED_A >= 1)) ||
    fail "A's /metrics shows no established outbound connection (pqmesh_connections_total{direction=\"outbound\",outcome=\"established\"} = $ESTABLISHED_A)"
if [[ "$MODE" == netns ]]; then
    # Proof of interception: the app dialled B's pod IP, and the nat rules took the connection.
    REDIR_A=$(redirected a PQMESH_OUTPUT 15001)
    REDIR_B=$(redirected b PQMESH_INBOUND 15006)
    ((REDIR_A >= 1)) ||
        fail "A's request was not intercepted: pod A's REDIRECT --to-ports 15001 rule matched $REDIR_A connections"
    ((REDIR_B >= 1)) ||
        fail "A's sidecar's connection was not intercepted in pod B: pod B's REDIRECT --to-ports 15006 rule matched $REDIR_B connections"
fi

# ---------------------------------------------------------------------------------------------
# C -> B: refused
# ---------------------------------------------------------------------------------------------
echo
echo "== C (shop/intruder) -> B (shop/api): should be refused =="
DENIED_BEFORE=$(metric_sum b pqmesh_connections_total direction=inbound outcome=denied_identity)
echo "\$ $C_SHOW"
rc=0
C_RESPONSE=$(c_request 2>"$DEMO/curl-c.err") || rc=$?
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
    DENIED=$(metric_sum b pqmesh_connections_total direction=inbound outcome=denied_identity)
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
if [[ "$MODE" == netns ]]; then
    echo "mode: network namespaces (pods $NS_PREFIX-a/-b/-c) with iptables interception"
else
    echo "mode: loopback (127.0.0.1, explicit sidecar ports, no iptables interception)"
fi
echo "response from B via the sidecars: $RESPONSE"
printf '%-22s%-24s(from A'"'"'s metrics)\n' "key exchange group:" "$GROUP"
printf '%-22s%s\n' "signature scheme:" "$SCHEME"
printf '%-22s%s\n' "client identity (A):" "$SPIFFE_A"
printf '%-22s%s\n' "server identity (B):" "$SPIFFE_B"
echo "A's certificate expires: $EXPIRY_A   B's certificate expires: $EXPIRY_B"
echo "B's app saw the caller as $ID_A (x-pqmesh-peer-identity, set by B's sidecar)"
if [[ "$MODE" == netns ]]; then
    echo "intercepted by iptables: A's app called http://$IP_B:$APP_PORT/ (B's pod IP, not a sidecar port);"
    echo "  pod A's nat REDIRECT to :15001 took $REDIR_A connection(s), pod B's REDIRECT to :15006 took $REDIR_B"
    echo "  A: pqmesh_connections_total{direction=\"outbound\",outcome=\"established\"} $ESTABLISHED_A"
fi
echo "C ($ID_C) -> B: REFUSED (B's sidecar denied the identity; B's app saw nothing)"
echo "  B: pqmesh_connections_total{direction=\"inbound\",outcome=\"denied_identity\"} $DENIED; B's app served $APP_REQUESTS_AFTER_C request(s), all from A"
echo
echo "demo OK"

if ((KEEP_RUNNING)); then
    if [[ "$MODE" == netns ]]; then
        cat <<EOF

Everything keeps running until you press Ctrl-C. Try (as root; only UID $PROXY_UID is exempt from
interception, so root's requests in a pod go through its sidecar too):
  ip netns exec $NS_A curl http://$IP_B:$APP_PORT/     # A -> B through the mesh: allowed
  ip netns exec $NS_C curl http://$IP_B:$APP_PORT/     # C -> B: refused by B's sidecar
  ip netns exec $NS_A iptables -t nat -S PQMESH_OUTPUT     # pod A's interception rules
admin endpoints (/ready /live /metrics /config_dump), inside each pod:
  ip netns exec $NS_CP curl http://127.0.0.1:15014/metrics   # control plane
  ip netns exec $NS_A curl http://127.0.0.1:15000/config_dump    # sidecar A (-b, -c alike)
  ip netns exec $NS_B curl http://127.0.0.1:15000/metrics
logs: .demo/*.log
EOF
    else
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
    fi
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
