#!/usr/bin/env bash
# End-to-end suite for pqmesh's transparent interception, in network namespaces.
#
#   sudo tests/netns/run.sh            (binaries from target/debug; PQMESH_BIN_DIR overrides)
#
# Topology (everything lives in namespaces named pqmesh-<pid>-*; nothing is added to the root
# network namespace, so several runs can go on at once and the host firewall is not involved):
#
#   pod-a 10.213.77.1  fd00:213:77::1  meshed   shop/web  sidecar (UID 1337) + app (UID 1000) + iptables/ip6tables
#   pod-b 10.213.77.2  fd00:213:77::2  meshed   shop/api  sidecar (UID 1337) + app (UID 1000) + iptables/ip6tables
#   ext-c 10.213.77.3  fd00:213:77::3  unmeshed            app only, no sidecar, no rules
#   pod-d 10.213.77.4  (IPv4 only)     meshed   shop/api-v2 added in section 9: Service 10.96.78.20:80 = pod-b + pod-d
#   cp    10.213.77.254:15012   pqmesh-control-plane --local
#   sw    the bridge br0 joining the four veth legs (captures are taken on pod-b's veth)
# Every pod also has its automatic IPv6 link-local address on eth0 (DAD is off, so it is usable
# at once); the apps listen on [::] (IPv4 and IPv6), as an app in a real pod may.
#
# Prints PASS/FAIL with evidence for every check and a summary table; exits 0 only if all pass.
# Setup problems (not root, missing tool, namespaces impossible, a process that will not become
# ready) abort with "FAILED: ..." and a non-zero status. Everything created is removed on exit,
# on failure and on Ctrl-C; logs are kept (path printed) when something failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SRC_BIN_DIR=${PQMESH_BIN_DIR:-$REPO/target/debug}
APP_UID=${PQMESH_NETNS_APP_UID:-1000}
PROXY_UID=1337
T0=$SECONDS

die() {
    echo "FAILED: $*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Preconditions: never skip silently.
# ---------------------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (ip netns, veth, bridge and iptables need it); try: sudo $0"
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export NO_COLOR=1 # plain logs from the pqmesh binaries (tracing-subscriber honours it)
for tool in ip iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore sysctl tcpdump tshark curl python3 setpriv \
    awk grep sed mktemp ss; do
    (PATH=$CLEAN_PATH; command -v "$tool" >/dev/null 2>&1) || die "required tool '$tool' is not installed (looked in $CLEAN_PATH)"
done
curl -V | grep -qw HTTP2 || die "curl was built without HTTP/2 support (needed for --http2-prior-knowledge)"
for b in pqmesh-control-plane pqmesh-sidecar pqmesh-test-app; do
    [ -x "$SRC_BIN_DIR/$b" ] || die "$SRC_BIN_DIR/$b is missing (cd $REPO && cargo build --bins, or set PQMESH_BIN_DIR)"
done
[ "$APP_UID" != "$PROXY_UID" ] && [ "$APP_UID" != 0 ] || die "PQMESH_NETNS_APP_UID must be neither 0 nor $PROXY_UID"
[ -f "$HERE/rawclient.py" ] || die "$HERE/rawclient.py is missing"
setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups env -i PATH="$CLEAN_PATH" python3 -c pass 2>/dev/null ||
    die "python3 (in $CLEAN_PATH) cannot be run by UID $APP_UID"

# ---------------------------------------------------------------------------------------------
# Names, addresses, state; cleanup trap.
# ---------------------------------------------------------------------------------------------
ID=$$
NET=10.213.77
IP_A=$NET.1 IP_B=$NET.2 IP_C=$NET.3 IP_D=$NET.4 IP_CP=$NET.254
SVC_IP=10.96.78.20 # a ClusterIP (section 9)
NET6=fd00:213:77
IP6_A=$NET6::1 IP6_B=$NET6::2 IP6_C=$NET6::3
NS_A=pqmesh-$ID-a NS_B=pqmesh-$ID-b NS_C=pqmesh-$ID-c NS_D=pqmesh-$ID-d NS_CP=pqmesh-$ID-cp NS_SW=pqmesh-$ID-sw
ALL_NS=("$NS_SW" "$NS_A" "$NS_B" "$NS_C" "$NS_CP")
declare -A PID_OF=()
SUITE_PID=
WORK=
SPIFFE_A=spiffe://cluster.local/ns/shop/sa/web
FORGED=spiffe://cluster.local/ns/kube-system/sa/admin

running() { # pid: exists and is not a zombie
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ]
}

stop_pid() { # pid (a child of this shell): SIGTERM, up to 5 s, then SIGKILL; reaps it
    local pid=$1 i
    if running "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do
            running "$pid" || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

our_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^pqmesh-$ID-" || true; }

# The suite stops the processes it started when it exits (so they are reaped, not left as
# zombies). Then, state-free as a backstop: everything the suite starts runs inside one of the
# namespaces pqmesh-$ID-* (control plane, sidecars, apps, tcpdump, clients), and deleting the
# namespaces removes the bridge and every veth.
cleanup() {
    local rc=$? ns p i busy
    set +e
    trap '' INT TERM
    trap - EXIT
    if [ -n "$SUITE_PID" ]; then
        # Interrupted: the suite stops (and reaps) its own processes on USR1; 10 s at most.
        kill -USR1 "$SUITE_PID" 2>/dev/null
        for i in $(seq 100); do
            running "$SUITE_PID" || break
            sleep 0.1
        done
        kill -KILL "$SUITE_PID" 2>/dev/null
        wait "$SUITE_PID" 2>/dev/null
    fi
    local nss=($(our_namespaces))
    for ns in "${nss[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
    done
    for i in $(seq 30); do
        busy=0
        for ns in "${nss[@]}"; do [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] && busy=1; done
        [ "$busy" = 0 ] && break
        sleep 0.1
    done
    for ns in "${nss[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null || echo "WARNING: could not delete network namespace $ns" >&2
    done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$rc" = 0 ]; then
            rm -rf "$WORK"
        else
            echo "logs kept in $WORK/logs (delete with: rm -rf $WORK)" >&2
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "FAILED: interrupted" >&2; exit 130' INT
trap 'echo "FAILED: terminated" >&2; exit 143' TERM

log_tail() { # name
    echo "----- last lines of $WORK/logs/$1.log -----" >&2
    tail -n 25 "$WORK/logs/$1.log" >&2 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Result bookkeeping.
# ---------------------------------------------------------------------------------------------
R_ID=() R_NAME=() R_RES=() R_FIG=()
record() { # id name PASS|FAIL figure
    R_ID+=("$1") R_NAME+=("$2") R_RES+=("$3") R_FIG+=("$4")
    printf '  [%s] %-4s %s\n         %s\n' "$3" "$1" "$2" "$4"
}
check() { # id name condition-status figure  (condition-status: 0 = pass)
    if [ "$3" = 0 ]; then record "$1" "$2" PASS "$4"; else record "$1" "$2" FAIL "$4"; fi
}
section() { printf '\n== %s\n' "$*"; }
oneline() { tr '\n' ' ' | sed -e 's/[[:space:]]*$//' -e 's/  */ /g'; }

# run_cap CMD...: sets OUT (stdout+stderr) and RC without tripping set -e
run_cap() { OUT=$("$@" 2>&1) && RC=0 || RC=$?; }

in_ns() { local ns=$1; shift; ip netns exec "$ns" env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 "$@"; }
as_uid() { # ns uid cmd...
    local ns=$1 uid=$2; shift 2
    ip netns exec "$ns" setpriv --reuid "$uid" --regid "$uid" --clear-groups --inh-caps=-all \
        env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 "$@"
}
as_app() { local ns=$1; shift; as_uid "$ns" "$APP_UID" "$@"; }

field() { # key text -> value of "key=value" in an app response line (first line)
    printf '%s\n' "$2" | head -n1 | sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p"
}

metric() { # ns name label-substring... -> sum over matching series of the sidecar's /metrics
    local ns=$1 name=$2 text lines f
    shift 2
    text=$(in_ns "$ns" curl -sf --max-time 3 http://127.0.0.1:15000/metrics) || { echo "unreachable"; return 0; }
    lines=$(printf '%s\n' "$text" | grep -E "^${name}(\\{| )" || true)
    for f in "$@"; do lines=$(printf '%s\n' "$lines" | grep -F -- "$f" || true); done
    printf '%s\n' "$lines" | awk 'NF { s += $NF } END { print s + 0 }'
}
metric_lines() { # ns name -> the series, one per line, indented
    in_ns "$1" curl -sf --max-time 3 http://127.0.0.1:15000/metrics | grep -E "^$2\\{" | sed 's/^/           /' || true
}

# local_conn POD: a direct (not intercepted: 127.0.0.0/8) request to the pod's own app; the
# returned conn=<n> is the number of TCP connections the app has accepted so far.
local_conn() {
    local out
    out=$(as_app "$1" curl -sS --max-time 5 http://127.0.0.1:8080/local-probe 2>&1) || true
    field conn "$out"
}

# ---------------------------------------------------------------------------------------------
# Setup.
# ---------------------------------------------------------------------------------------------
printf 'pqmesh network-namespace suite (run %s)\n' "$ID"
WORK=$(mktemp -d /tmp/pqmesh-netns.XXXXXX) || die "cannot create a work directory under /tmp"
chmod 0755 "$WORK"
mkdir -p "$WORK/bin" "$WORK/logs" "$WORK/cap" "$WORK/cp" "$WORK/pod-a" "$WORK/pod-b"
chmod 0700 "$WORK/cp"
chmod 0755 "$WORK/pod-a" "$WORK/pod-b"
chmod 0755 "$WORK/logs"
# A snapshot of the binaries: a rebuild during the run cannot mix versions between restarts.
for b in pqmesh-control-plane pqmesh-sidecar pqmesh-test-app; do
    cp "$SRC_BIN_DIR/$b" "$WORK/bin/$b" || die "cannot copy $SRC_BIN_DIR/$b"
done
chmod 0755 "$WORK/bin" "$WORK/bin"/*
cp "$HERE/rawclient.py" "$WORK/bin/rawclient.py" && chmod 0755 "$WORK/bin/rawclient.py"
BIN=$WORK/bin
echo "binaries: $SRC_BIN_DIR (snapshot in $BIN); work dir: $WORK"

# The suite runs as a background job that this shell waits for: bash defers a SIGINT trap until
# its foreground command finishes and skips it when that command (curl does) exits normally on
# SIGINT, but an interrupted `wait` runs the trap at once. Not indented, to keep it readable.
run_suite() {
TCPDUMP_PID=
stop_children() {
    local pid
    trap '' INT USR1
    for pid in "${PID_OF[@]}" $TCPDUMP_PID; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PID_OF[@]}" $TCPDUMP_PID; do stop_pid "$pid"; done
}
trap stop_children EXIT
trap 'exit 130' INT USR1

section "setup: namespaces, bridge, veths"
for ns in "${ALL_NS[@]}"; do
    ip netns add "$ns" 2>"$WORK/logs/netns.err" || die "cannot create network namespace $ns: $(cat "$WORK/logs/netns.err")"
    ip -n "$ns" link set lo up || die "cannot bring lo up in $ns"
done
ip -n "$NS_SW" link add br0 type bridge || die "cannot create a bridge in $NS_SW"
ip -n "$NS_SW" link set br0 up
attach() { # ns ip leg-name [ipv6]
    ip -n "$NS_SW" link add "$3" type veth peer name eth0 netns "$1" || die "cannot create veth $3 <-> $1/eth0"
    ip -n "$NS_SW" link set "$3" master br0 up
    ip -n "$1" addr add "$2/24" dev eth0
    # No duplicate address detection: the link-local address is usable as soon as the link is up.
    ip netns exec "$1" sysctl -qw net.ipv6.conf.eth0.accept_dad=0 || die "cannot turn off IPv6 DAD in $1"
    [ -z "${4:-}" ] || ip -n "$1" addr add "$4/64" dev eth0 nodad
    ip -n "$1" link set eth0 up
}
attach "$NS_A" "$IP_A" veth-a "$IP6_A"
attach "$NS_B" "$IP_B" veth-b "$IP6_B"
attach "$NS_C" "$IP_C" veth-c "$IP6_C"
attach "$NS_CP" "$IP_CP" veth-cp
link_local() { ip -n "$1" -6 addr show dev eth0 scope link | awk '/inet6/ { sub("/.*", "", $2); print $2; exit }'; }
LL_B=$(link_local "$NS_B")
[ -n "$LL_B" ] || die "$NS_B/eth0 has no IPv6 link-local address"
echo "  $NS_A=$IP_A $NS_B=$IP_B $NS_C=$IP_C $NS_CP=$IP_CP, bridge br0 in $NS_SW"
echo "  IPv6: $NS_A=$IP6_A $NS_B=$IP6_B (link-local $LL_B) $NS_C=$IP6_C"

section "setup: control plane"
TOKEN_A=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
TOKEN_B=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
( umask 077
  cat >"$WORK/cp/bootstrap-tokens.yaml" <<EOF
tokens:
- token: "$TOKEN_A"
  namespace: shop
  serviceAccount: web
- token: "$TOKEN_B"
  namespace: shop
  serviceAccount: api
EOF
  cat >"$WORK/cp/endpoints.yaml" <<EOF
endpoints:
- ip: $IP_A
  namespace: shop
  serviceAccount: web
- ip: $IP_B
  namespace: shop
  serviceAccount: api
- ip: $IP6_A
  namespace: shop
  serviceAccount: web
- ip: $IP6_B
  namespace: shop
  serviceAccount: api
EOF
)
chmod 0600 "$WORK/cp/bootstrap-tokens.yaml"
ip netns exec "$NS_CP" env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 \
    PQMESH_GRPC_ADDR="$IP_CP:15012" PQMESH_ADMIN_ADDR=127.0.0.1:15014 \
    "$BIN/pqmesh-control-plane" --local "$WORK/cp" >"$WORK/logs/cp.log" 2>&1 &
PID_OF[cp]=$!

wait_ready() { # ns url pid name [seconds]
    local ns=$1 url=$2 pid=$3 name=$4 limit=${5:-20} i code
    for i in $(seq $((limit * 5))); do
        if ! running "$pid"; then
            log_tail "$name"
            die "$name exited before becoming ready (see $WORK/logs/$name.log)"
        fi
        code=$(in_ns "$ns" curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)
        [ "$code" = 200 ] && { echo "  $name ready after ~$(( i * 200 ))ms ($url)"; return 0; }
        sleep 0.2
    done
    log_tail "$name"
    die "$name not ready within ${limit}s ($url last answered HTTP ${code:-nothing})"
}
wait_ready "$NS_CP" http://127.0.0.1:15014/ready "${PID_OF[cp]}" cp
[ -s "$WORK/cp/trust-bundle.pem" ] || die "control plane did not write $WORK/cp/trust-bundle.pem"
# Bridge connectivity (before any interception rule exists): every pod can reach the CP.
for ns in "$NS_A" "$NS_B" "$NS_C"; do
    in_ns "$ns" python3 -c 'import socket, sys; socket.create_connection((sys.argv[1], 15012), timeout=3).close()' "$IP_CP" 2>/dev/null ||
        die "no TCP connectivity from $ns to $IP_CP:15012 over the bridge"
done
# IPv6 too: a refused connection (RST from $IP6_B, nothing listens yet) proves the path.
in_ns "$NS_C" python3 -c 'import socket, sys
try: socket.create_connection((sys.argv[1], 9), timeout=3)
except ConnectionRefusedError: sys.exit(0)
sys.exit(1)' "$IP6_B" 2>/dev/null || die "no IPv6 connectivity from $NS_C to $IP6_B over the bridge"

section "setup: pods"
# Files the sidecar (UID 1337) needs: a world-readable bundle copy, a token only 1337 may read.
for pod in a b; do
    cp "$WORK/cp/trust-bundle.pem" "$WORK/pod-$pod/trust-bundle.pem"
    chmod 0644 "$WORK/pod-$pod/trust-bundle.pem"
done
printf '%s\n' "$TOKEN_A" >"$WORK/pod-a/token"
printf '%s\n' "$TOKEN_B" >"$WORK/pod-b/token"
chown "$PROXY_UID:$PROXY_UID" "$WORK/pod-a/token" "$WORK/pod-b/token"
chmod 0400 "$WORK/pod-a/token" "$WORK/pod-b/token"

start_app() { # key ns name http tcp
    ip netns exec "$2" setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups --inh-caps=-all \
        env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 "$BIN/pqmesh-test-app" "$3" "$4" "$5" >"$WORK/logs/$1.log" 2>&1 &
    PID_OF[$1]=$!
}
start_sidecar() { # pod(a|b) [VAR=value...]
    local pod=$1 ns
    shift
    case $pod in a) ns=$NS_A ;; b) ns=$NS_B ;; *) ns=$NS_D ;; esac
    ip netns exec "$ns" setpriv --reuid "$PROXY_UID" --regid "$PROXY_UID" --clear-groups --inh-caps=-all \
        env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 \
        PQMESH_CONTROL_PLANE_ADDR="$IP_CP:15012" \
        PQMESH_TRUST_BUNDLE="$WORK/pod-$pod/trust-bundle.pem" \
        PQMESH_BOOTSTRAP_TOKEN_FILE="$WORK/pod-$pod/token" \
        PQMESH_INBOUND_ALLOW='shop/*' \
        "$@" "$BIN/pqmesh-sidecar" >>"$WORK/logs/sidecar-$pod.log" 2>&1 &
    PID_OF[sidecar-$pod]=$!
    wait_ready "$ns" http://127.0.0.1:15000/ready "${PID_OF[sidecar-$pod]}" "sidecar-$pod"
}
restart_sidecar() { # pod [VAR=value...]
    local pod=$1
    shift
    echo "  restarting sidecar-$pod with: ${*:-defaults}" | tee -a "$WORK/logs/sidecar-$pod.log"
    stop_pid "${PID_OF[sidecar-$pod]}"
    start_sidecar "$pod" "$@"
}

for pod in a b; do
    [ "$pod" = a ] && ns=$NS_A || ns=$NS_B
    in_ns "$ns" "$BIN/pqmesh-sidecar" init >"$WORK/logs/init-$pod.log" 2>&1 ||
        { cat "$WORK/logs/init-$pod.log" >&2; die "pqmesh-sidecar init failed in $ns"; }
    echo "  init $ns: $(oneline <"$WORK/logs/init-$pod.log")"
done
start_app app-a "$NS_A" a '[::]:8080' '[::]:9000'
start_app app-b "$NS_B" b '[::]:8080' '[::]:9000'
start_app app-c "$NS_C" c '[::]:8080' '[::]:9000'
start_sidecar a
start_sidecar b
for key in app-a app-b app-c; do
    running "${PID_OF[$key]}" || { log_tail "$key"; die "$key exited"; }
done
echo "  setup done in $((SECONDS - T0))s"

# ---------------------------------------------------------------------------------------------
# 1. init: dry run and idempotency
# ---------------------------------------------------------------------------------------------
section "1. pqmesh-sidecar init: --dry-run output and idempotency"
echo "  --- pqmesh-sidecar init --dry-run (in $NS_A) ---"
in_ns "$NS_A" "$BIN/pqmesh-sidecar" init --dry-run | sed 's/^/  | /'
nat_rules() { in_ns "$NS_A" "${1:-iptables}-save" -t nat | { grep -E '^(-A|:PQMESH)' || true; } | sed 's/\[[0-9]*:[0-9]*\]//'; }
before=$(nat_rules) before6=$(nat_rules ip6tables)
run_cap in_ns "$NS_A" "$BIN/pqmesh-sidecar" init
after=$(nat_rules) after6=$(nat_rules ip6tables)
nat=$(in_ns "$NS_A" iptables-save -t nat)
j_out=$(printf '%s\n' "$nat" | grep -c -- '-j PQMESH_OUTPUT' || true)
j_in=$(printf '%s\n' "$nat" | grep -c -- '-j PQMESH_INBOUND' || true)
r_out=$(printf '%s\n' "$nat" | grep -c -- '^-A PQMESH_OUTPUT' || true)
r_in=$(printf '%s\n' "$nat" | grep -c -- '^-A PQMESH_INBOUND' || true)
[ "$RC" = 0 ] && [ "$j_out" = 1 ] && [ "$j_in" = 1 ] && [ "$before" = "$after" ] && r=0 || r=1
check 1 "second init leaves one jump per chain, same rules" "$r" \
    "init#2 rc=$RC; jumps: -j PQMESH_OUTPUT=$j_out -j PQMESH_INBOUND=$j_in; rules in chains: OUTPUT=$r_out INBOUND=$r_in; nat table identical before/after: $([ "$before" = "$after" ] && echo yes || echo NO)"
echo "  --- iptables-save -t nat in $NS_A after the second init ---"
printf '%s\n' "$after" | sed 's/^/  | /'
# ip6tables: the same rules (the IPv4 loopback addresses read as ::1; the 127.0.0.6 delivery
# passthrough is IPv4 only), one jump per chain.
as_v6=$(printf '%s\n' "$after" | grep -v -- '-s 127\.0\.0\.6/32' | sed -e 's#127\.0\.0\.1/32#::1/128#' -e 's#127\.0\.0\.0/8#::1/128#')
j6=$(printf '%s\n' "$after6" | grep -c -- '-j PQMESH_' || true)
[ -n "$after6" ] && [ "$after6" = "$as_v6" ] && [ "$before6" = "$after6" ] && [ "$j6" = 2 ] && r=0 || r=1
check 1v6 "ip6tables: the same rules as iptables, second init changes nothing" "$r" \
    "ip6tables PQMESH rules: $(printf '%s\n' "$after6" | grep -c -- '^-A PQMESH' || true), jumps: $j6; equal to the IPv4 set with ::1 for 127.0.0.0/8: $([ "$after6" = "$as_v6" ] && echo yes || echo NO); identical before/after: $([ "$before6" = "$after6" ] && echo yes || echo NO)"
[ "$after6" = "$as_v6" ] || diff <(printf '%s\n' "$as_v6") <(printf '%s\n' "$after6") | sed 's/^/  diff | /' || true

# Capture on pod-b's veth from now until the end of check 3, so the first mesh connection's
# handshake (which later requests may reuse) is on it.
CAP=$WORK/cap/pod-b-eth0.pcap
# (started directly, not through a shell function, so that $! is tcpdump itself: it must get the
# SIGTERM to flush and report its counters)
ip netns exec "$NS_B" tcpdump --immediate-mode -U -n -i eth0 -w "$CAP" 'tcp port 8080' \
    >"$WORK/logs/tcpdump.log" 2>&1 &
TCPDUMP_PID=$!
for i in $(seq 50); do
    grep -q 'listening on' "$WORK/logs/tcpdump.log" 2>/dev/null && break
    running "$TCPDUMP_PID" || { log_tail tcpdump; die "tcpdump failed to start"; }
    sleep 0.1
done
grep -q 'listening on' "$WORK/logs/tcpdump.log" || die "tcpdump did not start capturing on $NS_B/eth0"

# ---------------------------------------------------------------------------------------------
# 2. identity header
# ---------------------------------------------------------------------------------------------
section "2. A -> B through both sidecars: B's app sees A's SPIFFE ID"
allowed_b0=$(metric "$NS_B" pqmesh_connections_total 'direction="inbound"' 'outcome="allowed"')
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_B:8080/hello"
echo "  curl http://$IP_B:8080/hello (as UID $APP_UID in $NS_A) rc=$RC: $OUT"
peer=$(field peer "$OUT")
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = b ] && [ "$peer" = "$SPIFFE_A" ] && [ "$(field path "$OUT")" = /hello ] && r=0 || r=1
check 2a "B's app receives x-pqmesh-peer-identity = A's SPIFFE ID" "$r" "rc=$RC app=$(field app "$OUT") peer=$peer"

run_cap as_app "$NS_A" curl -sS --max-time 5 -H "x-pqmesh-peer-identity: $FORGED" "http://$IP_B:8080/forged"
echo "  curl -H 'x-pqmesh-peer-identity: $FORGED' ... rc=$RC: $OUT"
peer=$(field peer "$OUT")
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = b ] && [ "$peer" = "$SPIFFE_A" ] && r=0 || r=1
check 2b "a client-sent identity header is replaced, not passed on" "$r" "rc=$RC peer=$peer (forged value present: $(case "$OUT" in *kube-system*) echo YES;; *) echo no;; esac))"
allowed_b1=$(metric "$NS_B" pqmesh_connections_total 'direction="inbound"' 'outcome="allowed"')
echo "  B inbound connections outcome=allowed: $allowed_b0 -> $allowed_b1"

# ---------------------------------------------------------------------------------------------
# 3. on the wire: hybrid PQ TLS 1.3, no plaintext
# ---------------------------------------------------------------------------------------------
section "3. on the wire (capture on $NS_B/eth0, tcp port 8080)"
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_B:8080/capture-probe"
echo "  curl http://$IP_B:8080/capture-probe rc=$RC: $OUT"
sleep 0.5
stop_pid "$TCPDUMP_PID"
TCPDUMP_PID=
echo "  tcpdump: $(grep -E "packets (captured|dropped)" "$WORK/logs/tcpdump.log" | oneline)"
TS=(tshark -n -r "$CAP" -d tcp.port==8080,tls)
ch=$("${TS[@]}" -Y 'tls.handshake.type == 1' -T fields -E separator=' ' \
    -e tls.handshake.extensions_key_share_group -e tls.handshake.extensions_supported_group \
    -e tls.handshake.extensions_alpn_str 2>/dev/null || true)
sh=$("${TS[@]}" -Y 'tls.handshake.type == 2' -T fields -E separator=' ' \
    -e tls.handshake.extensions_key_share_group -e tls.handshake.extensions.supported_version 2>/dev/null || true)
n_ch=$(printf '%s' "$ch" | grep -c . || true)
n_sh=$(printf '%s' "$sh" | grep -c . || true)
echo "  ClientHello(s): key_share groups | supported_groups | ALPN"
printf '%s\n' "$ch" | sed 's/^/    /'
echo "  ServerHello(s): key_share group | supported_version"
printf '%s\n' "$sh" | sed 's/^/    /'
ch_ks=$("${TS[@]}" -Y 'tls.handshake.type == 1' -T fields -e tls.handshake.extensions_key_share_group 2>/dev/null | tr ',' '\n' | sort -u | oneline || true)
sh_ks=$("${TS[@]}" -Y 'tls.handshake.type == 2' -T fields -e tls.handshake.extensions_key_share_group 2>/dev/null | tr ',' '\n' | sort -u | oneline || true)
[ "$n_ch" -ge 1 ] && [ "$ch_ks" = 4588 ] && r=0 || r=1
check 3a "ClientHello key share = 4588 (0x11ec X25519MLKEM768) only" "$r" "$n_ch ClientHello(s); key_share groups offered: ${ch_ks:-none}"
[ "$n_sh" -ge 1 ] && [ "$sh_ks" = 4588 ] && ! printf '%s' "$sh" | grep -qv '0x0304' && r=0 || r=1
check 3b "ServerHello selects 4588 with TLS 1.3" "$r" "$n_sh ServerHello(s); selected: ${sh_ks:-none}; supported_version: $(printf '%s\n' "$sh" | awk '{print $NF}' | sort -u | oneline)"
n_http=$(tshark -n -r "$CAP" -Y http 2>/dev/null | grep -c . || true)
n_appdata=$("${TS[@]}" -Y 'tls.record.opaque_type == 23 || tls.record.content_type == 23' 2>/dev/null | grep -c . || true)
hits=""
for s in 'GET /' 'HTTP/1.1' 'app=b' 'x-pqmesh-peer-identity' 'capture-probe' 'spiffe://'; do
    grep -aqF -- "$s" "$CAP" && hits+="'$s' "
done
n_pkts=$(tshark -n -r "$CAP" 2>/dev/null | grep -c . || true)
[ "$n_pkts" -gt 0 ] && [ "$n_appdata" -gt 0 ] && [ "$n_http" = 0 ] && [ -z "$hits" ] && r=0 || r=1
check 3c "no plaintext HTTP on the wire" "$r" "$n_pkts packets, $n_appdata TLS application-data records; tshark -Y http: $n_http frames; raw pcap grep hits: ${hits:-none}"
hs_a=$(metric "$NS_A" pqmesh_tls_handshakes_total 'direction="outbound"' 'group="X25519MLKEM768"')
hs_b=$(metric "$NS_B" pqmesh_tls_handshakes_total 'direction="inbound"' 'group="X25519MLKEM768"')
[ "$hs_a" != unreachable ] && [ "$hs_a" -ge 1 ] && [ "$hs_b" != unreachable ] && [ "$hs_b" -ge 1 ] && r=0 || r=1
check 3d "sidecar metrics count X25519MLKEM768 handshakes" "$r" "A outbound=$hs_a, B inbound=$hs_b"
metric_lines "$NS_A" pqmesh_tls_handshakes_total
metric_lines "$NS_B" pqmesh_tls_handshakes_total

# ---------------------------------------------------------------------------------------------
# 3v6. IPv6: STRICT, mesh and outbound exclusions over IPv6 (after the capture: it would count
# the plaintext probes below as plaintext on the wire)
# ---------------------------------------------------------------------------------------------
section "3v6. IPv6: ip6tables interception (B at $IP6_B and ${LL_B}%eth0)"
T6=$SECONDS
# strict_v6 ID NAME URL: plaintext from unmeshed ext-c must not reach B's app (its connection
# count moves only by our local probe) and B's sidecar must count it as denied_plaintext.
strict_v6() {
    local conn0 conn1 dp0 dp1 reached
    conn0=$(local_conn "$NS_B")
    dp0=$(metric "$NS_B" pqmesh_connections_total 'direction="inbound"' 'outcome="denied_plaintext"')
    run_cap in_ns "$NS_C" curl -gsS --max-time 5 "$3"
    echo "  (STRICT) curl from $NS_C $3 rc=$RC: $(printf '%s' "$OUT" | oneline)"
    dp1=$(metric "$NS_B" pqmesh_connections_total 'direction="inbound"' 'outcome="denied_plaintext"')
    conn1=$(local_conn "$NS_B")
    case "$OUT" in *app=b*) reached=1 ;; *) reached=0 ;; esac
    [ "$reached" = 0 ] && [ "$RC" != 0 ] && [ "$dp1" != unreachable ] && [ "$dp1" -gt "$dp0" ] &&
        [ -n "$conn0" ] && [ "$conn1" = $((conn0 + 1)) ] && r=0 || r=1
    check "$1" "$2" "$r" \
        "curl rc=$RC; denied_plaintext $dp0 -> $dp1; app connections (local probes) $conn0 -> $conn1 (expected +1: only the probe)"
}
strict_v6 v6a "STRICT over IPv6 (global address): plaintext refused before the app" "http://[$IP6_B]:8080/plain-v6"
# The link-local address every pod has, named with its zone (%25 is "%" in a URL).
strict_v6 v6b "STRICT over IPv6 (link-local address): plaintext refused before the app" "http://[${LL_B}%25eth0]:8080/plain-ll"

hs0=$(metric "$NS_B" pqmesh_tls_handshakes_total 'direction="inbound"' 'group="X25519MLKEM768"')
run_cap as_app "$NS_A" curl -gsS --max-time 5 "http://[$IP6_B]:8080/mesh-v6"
echo "  curl http://[$IP6_B]:8080/mesh-v6 (as UID $APP_UID in $NS_A) rc=$RC: $OUT"
hs1=$(metric "$NS_B" pqmesh_tls_handshakes_total 'direction="inbound"' 'group="X25519MLKEM768"')
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = b ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ] &&
    [ "$hs1" != unreachable ] && [ "$hs1" -gt "$hs0" ] && r=0 || r=1
check v6c "A -> B by IPv6 address: PQ mTLS, B's app receives A's SPIFFE ID" "$r" \
    "rc=$RC app=$(field app "$OUT") peer=$(field peer "$OUT"); B inbound X25519MLKEM768 handshakes $hs0 -> $hs1"

# Outbound exclusions over IPv6: C's IPv6 address and port 9000 go straight out, C's IPv4 address
# (not excluded: the IPv6 CIDR must not reach iptables) still goes through A's sidecar.
run_cap in_ns "$NS_A" "$BIN/pqmesh-sidecar" init --exclude-outbound-cidrs "$IP6_C/128" --exclude-outbound-ports 9000
echo "  init --exclude-outbound-cidrs $IP6_C/128 --exclude-outbound-ports 9000: rc=$RC"
ex_rc=$RC
in4=$(in_ns "$NS_A" iptables-save -t nat | grep -c -- "$IP6_C" || true)
in6=$(in_ns "$NS_A" ip6tables-save -t nat | grep -c -- "-d $IP6_C/128 -j RETURN" || true)
sum0=$(metric "$NS_A" pqmesh_connections_total)
run_cap as_app "$NS_A" curl -gsS --max-time 5 "http://[$IP6_C]:8080/excluded-v6"
ex6=$RC ex6_app=$(field app "$OUT")
sum1=$(metric "$NS_A" pqmesh_connections_total)
run_cap as_app "$NS_A" python3 "$BIN/rawclient.py" echo "$IP6_C" 9000 1024
echo "  excluded port: raw TCP to [$IP6_C]:9000 rc=$RC: $OUT"
ex_port=$RC
sum2=$(metric "$NS_A" pqmesh_connections_total)
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_C:8080/not-excluded-v4"
v4=$RC v4_app=$(field app "$OUT")
sum3=$(metric "$NS_A" pqmesh_connections_total)
# ...and IPv6 not excluded is still intercepted under these rules.
run_cap as_app "$NS_A" curl -gsS --max-time 5 "http://[$IP6_B]:8080/still-meshed-v6"
meshed_peer=$(field peer "$OUT")
[ "$ex_rc" = 0 ] && [ "$in4" = 0 ] && [ "$in6" = 1 ] && [ "$ex6" = 0 ] && [ "$ex6_app" = c ] &&
    [ "$ex_port" = 0 ] && [ "$sum0" = "$sum1" ] && [ "$sum1" = "$sum2" ] &&
    [ "$v4" = 0 ] && [ "$v4_app" = c ] && [ "$sum3" = $((sum2 + 1)) ] && [ "$meshed_peer" = "$SPIFFE_A" ] && r=0 || r=1
check v6d "outbound exclusions over IPv6 (CIDR, port); IPv6 CIDR only in ip6tables" "$r" \
    "rule for $IP6_C in iptables: $in4, in ip6tables: $in6; [${IP6_C}]:8080 rc=$ex6 app=$ex6_app, [${IP6_C}]:9000 rc=$ex_port; A's connections_total $sum0 -> $sum1 -> $sum2 (unchanged = not redirected); $IP_C:8080 rc=$v4 app=$v4_app, total -> $sum3 (+1: through the sidecar); [$IP6_B]:8080 still meshed: peer=$meshed_peer"
run_cap in_ns "$NS_A" "$BIN/pqmesh-sidecar" init
[ "$RC" = 0 ] || die "re-running init with the default exclusions in $NS_A failed: $OUT"

# Fail closed: a namespace with IPv6 (lo's ::1) but no usable ip6tables must not be set up; one
# without IPv6 needs none.
NS_X=pqmesh-$ID-x
ip netns add "$NS_X" && ip -n "$NS_X" link set lo up || die "cannot create the scratch namespace $NS_X"
run_cap in_ns "$NS_X" "$BIN/pqmesh-sidecar" init --ip6tables /nonexistent/ip6tables
echo "  $NS_X (::1 on lo), init --ip6tables /nonexistent/ip6tables: rc=$RC: $OUT"
lines=$(printf '%s\n' "$OUT" | grep -c . || true)
[ "$RC" != 0 ] && [ "$lines" = 1 ] && printf '%s' "$OUT" | grep -q 'IPv6 is enabled.*bypass the sidecar' && r=0 || r=1
check v6e "IPv6 present, ip6tables unusable: init fails with one line" "$r" "rc=$RC, $lines line(s) of output"
in_ns "$NS_X" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || die "cannot disable IPv6 in $NS_X"
run_cap in_ns "$NS_X" "$BIN/pqmesh-sidecar" init --ip6tables /nonexistent/ip6tables
echo "  $NS_X (IPv6 disabled), same command: rc=$RC: $(printf '%s' "$OUT" | oneline)"
[ "$RC" = 0 ] && printf '%s' "$OUT" | grep -q '^pqmesh: no IPv6 in this network namespace' && r=0 || r=1
check v6f "no IPv6 in the namespace: init says so and sets up IPv4" "$r" "rc=$RC"
ip netns del "$NS_X"
echo "  (IPv6 section: $((SECONDS - T6))s)"

# ---------------------------------------------------------------------------------------------
# 4. protocols
# ---------------------------------------------------------------------------------------------
section "4. protocols through the mesh"
run_cap as_app "$NS_A" curl -sS --max-time 5 -w 'curl: connects=%{num_connects} http=%{http_version}\n' \
    "http://$IP_B:8080/one" "http://$IP_B:8080/two"
printf '%s\n' "$OUT" | sed 's/^/    /'
l1=$(printf '%s\n' "$OUT" | grep 'path=/one' || true)
l2=$(printf '%s\n' "$OUT" | grep 'path=/two' || true)
c1=$(field conn "$l1") c2=$(field conn "$l2")
[ "$RC" = 0 ] && [ "$(field app "$l1")" = b ] && [ "$(field app "$l2")" = b ] &&
    [ "$(field peer "$l1")" = "$SPIFFE_A" ] && [ "$(field peer "$l2")" = "$SPIFFE_A" ] && r=0 || r=1
check 4a "HTTP/1.1 keep-alive: two requests in one curl" "$r" \
    "rc=$RC; app conn numbers: /one conn=$c1, /two conn=$c2 ($([ -n "$c1" ] && [ "$c1" = "$c2" ] && echo "same app-side connection" || echo "different app-side connections")) [informational]"

# One URL per curl: curl 7.88.1 itself fails ("Error in the HTTP2 framing layer") when it reuses
# an h2c prior-knowledge connection, even straight to the app without pqmesh; several streams on
# one connection are checked with rawclient.py below.
run_cap as_app "$NS_A" curl -sS --max-time 5 --http2-prior-knowledge "http://$IP_B:8080/h2"
echo "    $OUT"
[ "$RC" = 0 ] && [ "$(field proto "$OUT")" = HTTP/2.0 ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ] && r=0 || r=1
check 4b "HTTP/2 prior knowledge (curl) arrives as HTTP/2.0" "$r" \
    "rc=$RC proto=$(field proto "$OUT") peer=$(field peer "$OUT") conn=$(field conn "$OUT")"

run_cap as_app "$NS_A" python3 "$BIN/rawclient.py" h2 "$IP_B" 8080 /s1 /s2 /s3
printf '%s\n' "$OUT" | sed 's/^/    /'
protos=$(printf '%s\n' "$OUT" | grep '^stream' | sed -n 's/.*proto=\([^ ]*\).*/\1/p' | sort -u | oneline)
peers=$(printf '%s\n' "$OUT" | grep '^stream' | sed -n 's/.*peer=\([^ ]*\).*/\1/p' | sort -u | oneline)
[ "$RC" = 0 ] && [ "$protos" = HTTP/2.0 ] && [ "$peers" = "$SPIFFE_A" ] && r=0 || r=1
check 4c "HTTP/2: 3 concurrent streams on one connection" "$r" "rc=$RC protos=$protos peers=$peers"

run_cap as_app "$NS_A" python3 "$BIN/rawclient.py" upgrade "$IP_B" 8080
echo "    $OUT"
check 4d "HTTP/1.1 Upgrade: websocket -> 101 then raw echo" "$RC" "$OUT"

run_cap as_app "$NS_A" python3 "$BIN/rawclient.py" echo "$IP_B" 9000 102400
echo "    $OUT"
check 4e "raw TCP to $IP_B:9000: 100 KiB echoed intact" "$RC" "$OUT"
echo "  B's pqmesh_http_connections_total / pqmesh_connections_total:"
metric_lines "$NS_B" pqmesh_http_connections_total
metric_lines "$NS_B" pqmesh_connections_total

# ---------------------------------------------------------------------------------------------
# 5. STRICT vs PERMISSIVE inbound
# ---------------------------------------------------------------------------------------------
section "5. plaintext from unmeshed ext-c to B: STRICT refuses, PERMISSIVE forwards"
conn0=$(local_conn "$NS_B")
dp0=$(metric "$NS_B" pqmesh_connections_total 'direction="inbound"' 'outcome="denied_plaintext"')
run_cap in_ns "$NS_C" curl -sS --max-time 5 "http://$IP_B:8080/plain"
echo "  (STRICT) curl from $NS_C http://$IP_B:8080/plain rc=$RC: $(printf '%s' "$OUT" | oneline)"
strict_out=$OUT strict_rc=$RC
dp1=$(metric "$NS_B" pqmesh_connections_total 'direction="inbound"' 'outcome="denied_plaintext"')
conn1=$(local_conn "$NS_B")
case "$strict_out" in *app=b*) reached=1 ;; *) reached=0 ;; esac
[ "$reached" = 0 ] && [ "$strict_rc" != 0 ] && [ "$dp1" != unreachable ] && [ "$dp1" -gt "$dp0" ] &&
    [ -n "$conn0" ] && [ "$conn1" = $((conn0 + 1)) ] && r=0 || r=1
check 5a "STRICT: plaintext refused before reaching the app" "$r" \
    "curl rc=$strict_rc; denied_plaintext $dp0 -> $dp1; app connections (local probes) $conn0 -> $conn1 (expected +1: only the probe)"

restart_sidecar b PQMESH_INBOUND_MODE=PERMISSIVE
run_cap in_ns "$NS_C" curl -sS --max-time 5 "http://$IP_B:8080/plain"
echo "  (PERMISSIVE) curl from $NS_C rc=$RC: $OUT"
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = b ] && [ "$(field peer "$OUT")" = none ] && r=0 || r=1
check 5b "PERMISSIVE: plaintext forwarded, no identity" "$r" "rc=$RC app=$(field app "$OUT") peer=$(field peer "$OUT")"
run_cap in_ns "$NS_C" curl -sS --max-time 5 -H "x-pqmesh-peer-identity: $FORGED" "http://$IP_B:8080/plain-forged"
echo "  (PERMISSIVE) curl -H 'x-pqmesh-peer-identity: $FORGED' rc=$RC: $OUT"
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = b ] && [ "$(field peer "$OUT")" = none ] && r=0 || r=1
check 5c "PERMISSIVE: forged identity header from plaintext removed" "$r" "rc=$RC peer=$(field peer "$OUT")"
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_B:8080/mesh-after-permissive"
echo "  (PERMISSIVE) mesh request from $NS_A rc=$RC: $OUT"
[ "$RC" = 0 ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ] && r=0 || r=1
check 5d "PERMISSIVE: mesh clients still get their identity" "$r" "rc=$RC peer=$(field peer "$OUT")"

# ---------------------------------------------------------------------------------------------
# 6. outbound to an unmeshed destination
# ---------------------------------------------------------------------------------------------
section "6. A -> unmeshed ext-c: passthrough (default), then refuse"
pt0=$(metric "$NS_A" pqmesh_connections_total 'direction="outbound"' 'outcome="passthrough"')
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_C:8080/out"
echo "  (passthrough) curl http://$IP_C:8080/out rc=$RC: $OUT"
pt1=$(metric "$NS_A" pqmesh_connections_total 'direction="outbound"' 'outcome="passthrough"')
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = c ] && [ "$(field peer "$OUT")" = none ] && [ "$pt1" != unreachable ] && [ "$pt1" -gt "$pt0" ] && r=0 || r=1
check 6a "passthrough: plaintext to unmeshed server works, counted" "$r" "rc=$RC app=$(field app "$OUT") peer=$(field peer "$OUT"); outcome=passthrough $pt0 -> $pt1"

restart_sidecar a PQMESH_OUTBOUND_UNMESHED=refuse
du0=$(metric "$NS_A" pqmesh_connections_total 'direction="outbound"' 'outcome="denied_unmeshed"')
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_C:8080/out"
echo "  (refuse) curl http://$IP_C:8080/out rc=$RC: $(printf '%s' "$OUT" | oneline)"
du1=$(metric "$NS_A" pqmesh_connections_total 'direction="outbound"' 'outcome="denied_unmeshed"')
case "$OUT" in *app=c*) reached=1 ;; *) reached=0 ;; esac
[ "$RC" != 0 ] && [ "$reached" = 0 ] && [ "$du1" != unreachable ] && [ "$du1" -gt "$du0" ] && r=0 || r=1
check 6b "refuse: connection to unmeshed server refused, counted" "$r" "curl rc=$RC; outcome=denied_unmeshed $du0 -> $du1"
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_B:8080/mesh-under-refuse"
echo "  (refuse) mesh request to B rc=$RC: $OUT"
[ "$RC" = 0 ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ] && r=0 || r=1
check 6c "refuse: meshed destinations still work" "$r" "rc=$RC app=$(field app "$OUT") peer=$(field peer "$OUT")"

# ---------------------------------------------------------------------------------------------
# 7. the sidecar's own traffic is not intercepted
# ---------------------------------------------------------------------------------------------
section "7. UID $PROXY_UID traffic bypasses interception"
code=$(in_ns "$NS_A" curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:15000/ready || true)
cp_conns=$(in_ns "$NS_A" ss -Htn state established "dst $IP_CP:15012" | grep -c . || true)
[ "$code" = 200 ] && [ "$cp_conns" -ge 1 ] && r=0 || r=1
check 7a "sidecar (UID $PROXY_UID) reaches the control plane while outbound=refuse" "$r" \
    "A /ready=$code; established connections to $IP_CP:15012: $cp_conns (a redirected CP connection would have been refused as unmeshed)"
sum0=$(metric "$NS_A" pqmesh_connections_total)
run_cap as_uid "$NS_A" "$PROXY_UID" curl -sS --max-time 5 "http://$IP_C:8080/as-1337"
echo "  curl as UID $PROXY_UID in $NS_A to http://$IP_C:8080/as-1337 rc=$RC: $OUT"
sum1=$(metric "$NS_A" pqmesh_connections_total)
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = c ] && [ "$sum0" = "$sum1" ] && r=0 || r=1
check 7b "a UID $PROXY_UID process reaches unmeshed ext-c directly" "$r" \
    "rc=$RC app=$(field app "$OUT"); A's connections_total (all outcomes) $sum0 -> $sum1 (unchanged = not redirected)"

# ---------------------------------------------------------------------------------------------
# 8. extras: allow-list, a pod calling its own IP, init --remove
# ---------------------------------------------------------------------------------------------
section "7b. delivery to the app: the original destination (pod IP), else 127.0.0.1"
# B's app on 0.0.0.0 is served throughout (checks 2-4). Two more apps in pod B: one bound to the
# pod IP only, one to 127.0.0.1 only; nothing listens on 8083.
start_app app-b-podip "$NS_B" b-podip "$IP_B:8081" "$IP_B:9001"
start_app app-b-lo "$NS_B" b-lo 127.0.0.1:8082 127.0.0.1:9002
sleep 0.5
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_B:8081/pod-ip-only"
echo "  curl http://$IP_B:8081/pod-ip-only (app bound to $IP_B only) rc=$RC: $OUT"
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = b-podip ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ] && r=0 || r=1
check 7d "app bound to the pod IP only: served, with A's identity" "$r" "rc=$RC app=$(field app "$OUT") peer=$(field peer "$OUT")"
run_cap as_app "$NS_A" python3 "$BIN/rawclient.py" echo "$IP_B" 9001 102400
check 7e "raw TCP to an app bound to the pod IP only ($IP_B:9001): 100 KiB echoed intact" "$RC" "$OUT"
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_B:8082/loopback-only"
echo "  curl http://$IP_B:8082/loopback-only (app bound to 127.0.0.1 only) rc=$RC: $OUT"
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = b-lo ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ] && r=0 || r=1
check 7f "app bound to 127.0.0.1 only: served (fallback), with A's identity" "$r" "rc=$RC app=$(field app "$OUT") peer=$(field peer "$OUT")"
run_cap as_app "$NS_A" curl -sS --max-time 5 -w ' status=%{http_code}' "http://$IP_B:8083/nobody"
echo "  curl http://$IP_B:8083/nobody (no app on 8083) rc=$RC: $OUT"
case "$OUT" in *"$IP_B:8083"*"127.0.0.1:8083"*status=502*) r=0 ;; *) r=1 ;; esac
check 7g "no app on the port: 502 naming both addresses tried" "$r" "$(printf '%s' "$OUT" | oneline)"
stop_pid "${PID_OF[app-b-podip]}"; unset 'PID_OF[app-b-podip]'
stop_pid "${PID_OF[app-b-lo]}"; unset 'PID_OF[app-b-lo]'

# ---------------------------------------------------------------------------------------------
# 9. a Service with backends of two identities: client-side balancing over mTLS
# ---------------------------------------------------------------------------------------------
section "9. Service $SVC_IP:80 -> pod-b (shop/api) + pod-d (shop/api-v2): balanced by A's sidecar"
# Pod D joins now: its token and endpoints entry are hot-reloaded by the control plane, and the
# Service lists both pods. In pod A, kube-proxy's ClusterIP DNAT is emulated as kube-proxy writes
# it (random 50/50 to the two pod IPs) for anything that reaches nat OUTPUT un-redirected; the
# app's own connection is redirected to the sidecar first, which dials a pod IP itself.
ip netns add "$NS_D" && ip -n "$NS_D" link set lo up || die "cannot create $NS_D"
attach "$NS_D" "$IP_D" veth-d
mkdir -p "$WORK/pod-d" && chmod 0755 "$WORK/pod-d"
cp "$WORK/cp/trust-bundle.pem" "$WORK/pod-d/trust-bundle.pem" && chmod 0644 "$WORK/pod-d/trust-bundle.pem"
TOKEN_D=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
printf '%s\n' "$TOKEN_D" >"$WORK/pod-d/token"
chown "$PROXY_UID:$PROXY_UID" "$WORK/pod-d/token" && chmod 0400 "$WORK/pod-d/token"
printf -- '- token: "%s"\n  namespace: shop\n  serviceAccount: api-v2\n' "$TOKEN_D" >>"$WORK/cp/bootstrap-tokens.yaml"
printf -- '- ip: %s\n  namespace: shop\n  serviceAccount: api-v2\nservices:\n- name: shop/api\n  ip: %s\n  port: 80\n  targetPort: 8080\n  backends:\n  - ip: %s\n  - ip: %s\n' \
    "$IP_D" "$SVC_IP" "$IP_B" "$IP_D" >>"$WORK/cp/endpoints.yaml"
ip -n "$NS_A" route add 10.96.0.0/16 dev eth0
in_ns "$NS_A" iptables -t nat -A OUTPUT -d "$SVC_IP/32" -p tcp --dport 80 -m statistic --mode random --probability 0.5 -j DNAT --to-destination "$IP_B:8080"
in_ns "$NS_A" iptables -t nat -A OUTPUT -d "$SVC_IP/32" -p tcp --dport 80 -j DNAT --to-destination "$IP_D:8080"
in_ns "$NS_D" "$BIN/pqmesh-sidecar" init >"$WORK/logs/init-d.log" 2>&1 || die "pqmesh-sidecar init failed in $NS_D"
start_app app-d "$NS_D" d '[::]:8080' '[::]:9000'
sleep 1 # the control plane polls its files twice a second
start_sidecar d
allowed() { metric "$1" pqmesh_connections_total 'direction="inbound"' 'outcome="allowed"'; }
ab0=$(allowed "$NS_B") ad0=$(allowed "$NS_D")
pt0=$(metric "$NS_A" pqmesh_connections_total 'direction="outbound"' 'outcome="passthrough"')
n_b=0 n_d=0 n_bad=0 bad=
for i in $(seq 40); do
    run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$SVC_IP/svc/$i"
    if [ "$RC" = 0 ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ]; then
        case "$(field app "$OUT")" in b) n_b=$((n_b + 1)) ;; d) n_d=$((n_d + 1)) ;; *) n_bad=$((n_bad + 1)) bad=$OUT ;; esac
    else
        n_bad=$((n_bad + 1)) bad="rc=$RC $OUT"
    fi
done
ab1=$(allowed "$NS_B") ad1=$(allowed "$NS_D")
pt1=$(metric "$NS_A" pqmesh_connections_total 'direction="outbound"' 'outcome="passthrough"')
[ "$n_bad" = 0 ] && [ "$n_b" -ge 5 ] && [ "$n_d" -ge 5 ] && [ $((ab1 - ab0)) = "$n_b" ] && [ $((ad1 - ad0)) = "$n_d" ] && [ "$pt0" = "$pt1" ] && r=0 || r=1
check 9a "40 connections to the ClusterIP spread over both identities, each mTLS with A's identity" "$r" \
    "split: pod-b (shop/api) $n_b, pod-d (shop/api-v2) $n_d, failed $n_bad ${bad:+($bad)}; mTLS connections admitted by B +$((ab1 - ab0)), by D +$((ad1 - ad0)); A passthrough (plaintext) $pt0 -> $pt1"
# HTTP/2 with prior knowledge: 20 concurrent streams on one connection (rawclient.py; curl 7.88
# cannot reuse a connection to hyper's HTTP/2 server, with or without the mesh).
paths=()
for i in $(seq 20); do paths+=("/h2/$i"); done
run_cap as_app "$NS_A" python3 "$BIN/rawclient.py" h2 "$SVC_IP" 80 "${paths[@]}"
h2_b=$(printf '%s\n' "$OUT" | grep -c '^stream .*app=b proto=HTTP/2.0' || true)
h2_d=$(printf '%s\n' "$OUT" | grep -c '^stream .*app=d proto=HTTP/2.0' || true)
h2_peer=$(printf '%s\n' "$OUT" | grep '^stream' | grep -c "peer=$SPIFFE_A" || true)
summary=$(printf '%s\n' "$OUT" | grep '^streams=' || true)
[ "$RC" = 0 ] && [ $((h2_b + h2_d)) = 20 ] && [ "$h2_b" -ge 2 ] && [ "$h2_d" -ge 2 ] && [ "$h2_peer" = 20 ] && r=0 || r=1
check 9b "HTTP/2: 20 streams on one app connection spread over both backends" "$r" \
    "rc=$RC; $summary; split: pod-b $h2_b, pod-d $h2_d; with A's identity: $h2_peer/20"

section "8. extras: inbound allow-list, self-call through the mesh, init --remove"
restart_sidecar b 'PQMESH_INBOUND_ALLOW=other/*'
conn0=$(local_conn "$NS_B")
di0=$(metric "$NS_B" pqmesh_connections_total 'direction="inbound"' 'outcome="denied_identity"')
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_B:8080/not-allowed"
echo "  (B allows only other/*) curl from $NS_A rc=$RC: $(printf '%s' "$OUT" | oneline)"
di1=$(metric "$NS_B" pqmesh_connections_total 'direction="inbound"' 'outcome="denied_identity"')
conn1=$(local_conn "$NS_B")
case "$OUT" in *app=b*) reached=1 ;; *) reached=0 ;; esac
[ "$RC" != 0 ] && [ "$reached" = 0 ] && [ "$di1" != unreachable ] && [ "$di1" -gt "$di0" ] &&
    [ -n "$conn0" ] && [ "$conn1" = $((conn0 + 1)) ] && r=0 || r=1
check 8a "mesh peer outside PQMESH_INBOUND_ALLOW is refused" "$r" \
    "curl rc=$RC; denied_identity $di0 -> $di1; app connections (local probes) $conn0 -> $conn1"

run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_A:8080/self"
echo "  curl from $NS_A to its own pod IP http://$IP_A:8080/self rc=$RC: $OUT"
[ "$RC" = 0 ] && [ "$(field app "$OUT")" = a ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ] && r=0 || r=1
check 8b "a pod calling its own IP goes through its own inbound (mTLS)" "$r" "rc=$RC app=$(field app "$OUT") peer=$(field peer "$OUT")"

run_cap in_ns "$NS_A" "$BIN/pqmesh-sidecar" init --remove
rm1=$RC
run_cap in_ns "$NS_A" "$BIN/pqmesh-sidecar" init --remove
rm2=$RC
left=$(in_ns "$NS_A" iptables-save -t nat | grep -c PQMESH || true)
left6=$(in_ns "$NS_A" ip6tables-save -t nat | grep -c PQMESH || true)
sum0=$(metric "$NS_A" pqmesh_connections_total)
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_C:8080/after-remove"
echo "  (rules removed, sidecar still outbound=refuse) curl to http://$IP_C:8080/after-remove rc=$RC: $OUT"
sum1=$(metric "$NS_A" pqmesh_connections_total)
[ "$rm1" = 0 ] && [ "$rm2" = 0 ] && [ "$left" = 0 ] && [ "$left6" = 0 ] && [ "$RC" = 0 ] && [ "$(field app "$OUT")" = c ] && [ "$sum0" = "$sum1" ] && r=0 || r=1
check 8c "init --remove (twice) deletes all pqmesh rules (both families); traffic no longer intercepted" "$r" \
    "remove rc=$rm1,$rm2; PQMESH lines left in nat: $left (ip6tables: $left6); app->ext-c rc=$RC app=$(field app "$OUT"); A connections_total $sum0 -> $sum1"

# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
for key in cp app-a app-b app-c sidecar-a sidecar-b; do
    running "${PID_OF[$key]}" || record X "$key still running at the end" FAIL "process ${PID_OF[$key]} exited (see $WORK/logs/$key.log)"
done
section "summary (total runtime $((SECONDS - T0))s)"
printf '  %-4s %-4s %s\n' ID RES CHECK
failed=0
for i in "${!R_ID[@]}"; do
    printf '  %-4s %-4s %s\n' "${R_ID[$i]}" "${R_RES[$i]}" "${R_NAME[$i]}"
    [ "${R_RES[$i]}" = PASS ] || failed=$((failed + 1))
done
if [ "$failed" -gt 0 ]; then
    for key in sidecar-a sidecar-b; do
        echo "----- WARN/ERROR lines of $key.log -----" >&2
        grep -E 'WARN|ERROR' "$WORK/logs/$key.log" | tail -n 15 >&2 || true
    done
    echo "FAILED: $failed of ${#R_ID[@]} checks failed" >&2
    exit 1
fi
echo "ALL ${#R_ID[@]} CHECKS PASSED"
}

run_suite &
SUITE_PID=$!
wait "$SUITE_PID" && rc=0 || rc=$?
SUITE_PID=
exit "$rc"
