#!/usr/bin/env bash
# Reliability checks that need real interception and real links, in network namespaces:
# spoofing the peer-identity header through iptables-redirected traffic (HTTP/1.1, HTTP/2,
# mixed case, duplicates, plaintext from an unmeshed pod, straight at the inbound port), a
# network partition between pods (`ip link set down`) under steady traffic and its recovery, the
# control plane cut off from the pods while traffic continues, and the control plane process
# stopped (PQMESH_CP_STOP_SECS, default 30 s) while pod A's client calls B by Service name and by
# pod IP and both sidecars' /ready is polled: zero failed requests, /ready 200 throughout.
#
#   sudo tests/netns/reliability.sh     (binaries from target/debug; PQMESH_BIN_DIR overrides)
#
# Topology (namespaces pqmesh-rel-<pid>-*, nothing in the root namespace):
#   pod-a 10.213.78.1 meshed shop/web, pod-b 10.213.78.2 meshed shop/api (admits shop/web only),
#   ext-c 10.213.78.3 unmeshed, cp 10.213.78.254:15012, bridge br0 in the "sw" namespace;
#   Service api.shop.svc.cluster.local = ClusterIP 10.96.78.10:80 -> pod-b:8080 (the name resolved
#   in the client as cluster DNS would, kube-proxy's DNAT emulated in pod-a's nat OUTPUT).
# Prints a results table (check, expected, actual, requests that reached B's app); exits 0 only
# if every check passes. Not root or a missing tool: "FAILED: ..." and a non-zero status.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SRC_BIN_DIR=${PQMESH_BIN_DIR:-$REPO/target/debug}
APP_UID=${PQMESH_NETNS_APP_UID:-1000}
PROXY_UID=1337
PARTITION_SECS=${PQMESH_PARTITION_SECS:-10}
CP_CUT_SECS=${PQMESH_CP_CUT_SECS:-10}
CP_STOP_SECS=${PQMESH_CP_STOP_SECS:-30}
T0=$SECONDS
die() { echo "FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (ip netns, veth, bridge and iptables need it); try: sudo $0"
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export NO_COLOR=1
for tool in ip iptables iptables-restore curl python3 setpriv awk grep sed mktemp; do
    (PATH=$CLEAN_PATH; command -v "$tool" >/dev/null 2>&1) || die "required tool '$tool' is not installed"
done
curl -V | grep -qw HTTP2 || die "curl was built without HTTP/2 support"
for b in pqmesh-control-plane pqmesh-sidecar pqmesh-test-app; do
    [ -x "$SRC_BIN_DIR/$b" ] || die "$SRC_BIN_DIR/$b is missing (cargo build --bins, or set PQMESH_BIN_DIR)"
done

ID=$$
NET=10.213.78
IP_A=$NET.1 IP_B=$NET.2 IP_C=$NET.3 IP_CP=$NET.254
SVC_IP=10.96.78.10 SVC_NAME=api.shop.svc.cluster.local
NS_A=pqmesh-rel-$ID-a NS_B=pqmesh-rel-$ID-b NS_C=pqmesh-rel-$ID-c NS_CP=pqmesh-rel-$ID-cp NS_SW=pqmesh-rel-$ID-sw
SPIFFE_A=spiffe://cluster.local/ns/shop/sa/web
FORGED=spiffe://cluster.local/ns/kube-system/sa/admin
declare -A PID_OF=()
WORK=$(mktemp -d /tmp/pqmesh-rel.XXXXXX) || die "cannot create a work directory"
chmod 0755 "$WORK"
mkdir -p "$WORK/bin" "$WORK/logs" "$WORK/cp" "$WORK/pod-a" "$WORK/pod-b"
chmod 0700 "$WORK/cp"
chmod 0755 "$WORK/logs" "$WORK/pod-a" "$WORK/pod-b"

running() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ]; }
cleanup() {
    local rc=$? pid ns
    set +e
    trap - EXIT INT TERM
    for pid in "${PID_OF[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PID_OF[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^pqmesh-rel-$ID-"); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null || echo "WARNING: could not delete $ns" >&2
    done
    if [ "$rc" = 0 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK/logs" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "FAILED: interrupted" >&2; exit 130' INT
trap 'echo "FAILED: terminated" >&2; exit 143' TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 "$@"; }
as_uid() { local ns=$1 uid=$2; shift 2
    ip netns exec "$ns" setpriv --reuid "$uid" --regid "$uid" --clear-groups --inh-caps=-all \
        env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 "$@"; }
as_app() { local ns=$1; shift; as_uid "$ns" "$APP_UID" "$@"; }
run_cap() { OUT=$("$@" 2>&1) && RC=0 || RC=$?; }
field() { printf '%s\n' "$2" | head -n1 | sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p"; }
# B's app numbers its requests (req=N); a loopback probe (not intercepted) reads the count.
b_reqs() { local out; out=$(as_app "$NS_B" curl -sS --max-time 5 http://127.0.0.1:8080/local-probe 2>&1) || true; echo "$(field req "$out")"; }
metric() { local ns=$1 name=$2 text lines f; shift 2
    text=$(in_ns "$ns" curl -sf --max-time 3 http://127.0.0.1:15000/metrics) || { echo unreachable; return 0; }
    lines=$(printf '%s\n' "$text" | grep -E "^${name}(\\{| )" || true)
    for f in "$@"; do lines=$(printf '%s\n' "$lines" | grep -F -- "$f" || true); done
    printf '%s\n' "$lines" | awk 'NF { s += $NF } END { print s + 0 }'; }
wait_ready() { local ns=$1 url=$2 pid=$3 name=$4 i
    for i in $(seq 100); do
        running "$pid" || { tail -n 20 "$WORK/logs/$name.log" >&2; die "$name exited"; }
        [ "$(in_ns "$ns" curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null)" = 200 ] && return 0
        sleep 0.2
    done
    tail -n 20 "$WORK/logs/$name.log" >&2; die "$name not ready within 20 s"; }

R_ID=() R_NAME=() R_EXP=() R_ACT=() R_REACH=() R_RES=()
FAILS=0
record() { # id name expected actual reached
    local res=PASS
    [ "$3" = "$4" ] || res=FAIL
    [ "$res" = PASS ] || FAILS=$((FAILS + 1))
    R_ID+=("$1") R_NAME+=("$2") R_EXP+=("$3") R_ACT+=("$4") R_REACH+=("$5") R_RES+=("$res")
    printf '  [%s] %-4s %s: expected %s, actual %s, reached B app %s\n' "$res" "$1" "$2" "$3" "$4" "$5"
}
section() { printf '\n== %s\n' "$*"; }

for b in pqmesh-control-plane pqmesh-sidecar pqmesh-test-app; do cp "$SRC_BIN_DIR/$b" "$WORK/bin/$b"; done
chmod 0755 "$WORK/bin" "$WORK/bin"/*
BIN=$WORK/bin

section "setup"
for ns in "$NS_SW" "$NS_A" "$NS_B" "$NS_C" "$NS_CP"; do
    ip netns add "$ns" || die "cannot create network namespace $ns"
    ip -n "$ns" link set lo up
done
ip -n "$NS_SW" link add br0 type bridge && ip -n "$NS_SW" link set br0 up
attach() { ip -n "$NS_SW" link add "$3" type veth peer name eth0 netns "$1" || die "cannot create veth $3"
    ip -n "$NS_SW" link set "$3" master br0 up; ip -n "$1" addr add "$2/24" dev eth0; ip -n "$1" link set eth0 up; }
attach "$NS_A" "$IP_A" veth-a; attach "$NS_B" "$IP_B" veth-b; attach "$NS_C" "$IP_C" veth-c; attach "$NS_CP" "$IP_CP" veth-cp
TOKEN_A=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
TOKEN_B=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
( umask 077
  printf 'tokens:\n- {token: "%s", namespace: shop, serviceAccount: web}\n- {token: "%s", namespace: shop, serviceAccount: api}\n' "$TOKEN_A" "$TOKEN_B" >"$WORK/cp/bootstrap-tokens.yaml"
  printf 'endpoints:\n- {ip: %s, namespace: shop, serviceAccount: web}\n- {ip: %s, namespace: shop, serviceAccount: api}\n- {ip: %s, ports: [80], namespace: shop, serviceAccount: api}\n' "$IP_A" "$IP_B" "$SVC_IP" >"$WORK/cp/endpoints.yaml" )
start_cp() {
    ip netns exec "$NS_CP" env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 PQMESH_GRPC_ADDR="$IP_CP:15012" \
        PQMESH_ADMIN_ADDR=127.0.0.1:15014 "$BIN/pqmesh-control-plane" --local "$WORK/cp" >>"$WORK/logs/cp.log" 2>&1 &
    PID_OF[cp]=$!
    wait_ready "$NS_CP" http://127.0.0.1:15014/ready "${PID_OF[cp]}" cp; }
start_cp
for pod in a b; do
    cp "$WORK/cp/trust-bundle.pem" "$WORK/pod-$pod/trust-bundle.pem"; chmod 0644 "$WORK/pod-$pod/trust-bundle.pem"
done
printf '%s\n' "$TOKEN_A" >"$WORK/pod-a/token"; printf '%s\n' "$TOKEN_B" >"$WORK/pod-b/token"
chown "$PROXY_UID:$PROXY_UID" "$WORK/pod-a/token" "$WORK/pod-b/token"; chmod 0400 "$WORK/pod-a/token" "$WORK/pod-b/token"
start_app() { ip netns exec "$2" setpriv --reuid "$APP_UID" --regid "$APP_UID" --clear-groups --inh-caps=-all \
    env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 "$BIN/pqmesh-test-app" "$3" 0.0.0.0:8080 0.0.0.0:9000 >"$WORK/logs/$1.log" 2>&1 &
    PID_OF[$1]=$!; }
start_sidecar() { local pod=$1 ns allow; [ "$pod" = a ] && ns=$NS_A allow='shop/*' || { ns=$NS_B; allow=shop/web; }
    in_ns "$ns" "$BIN/pqmesh-sidecar" init >"$WORK/logs/init-$pod.log" 2>&1 || die "pqmesh-sidecar init failed in $ns"
    ip netns exec "$ns" setpriv --reuid "$PROXY_UID" --regid "$PROXY_UID" --clear-groups --inh-caps=-all \
        env -i PATH="$CLEAN_PATH" HOME=/tmp NO_COLOR=1 PQMESH_CONTROL_PLANE_ADDR="$IP_CP:15012" \
        PQMESH_TRUST_BUNDLE="$WORK/pod-$pod/trust-bundle.pem" PQMESH_BOOTSTRAP_TOKEN_FILE="$WORK/pod-$pod/token" \
        PQMESH_INBOUND_ALLOW="$allow" "$BIN/pqmesh-sidecar" >>"$WORK/logs/sidecar-$pod.log" 2>&1 &
    PID_OF[sidecar-$pod]=$!
    wait_ready "$ns" http://127.0.0.1:15000/ready "${PID_OF[sidecar-$pod]}" "sidecar-$pod"; }
start_app app-a "$NS_A" a; start_app app-b "$NS_B" b; start_app app-c "$NS_C" c
start_sidecar a; start_sidecar b
# The Service: a route for the service range and kube-proxy's DNAT for the sidecar's own
# (UID 1337, not intercepted) connection to the ClusterIP.
ip -n "$NS_A" route add 10.96.0.0/16 dev eth0
in_ns "$NS_A" iptables -t nat -A OUTPUT -d "$SVC_IP/32" -p tcp --dport 80 -j DNAT --to-destination "$IP_B:8080"
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_B:8080/warm-up"
[ "$RC" = 0 ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ] || die "A -> B does not work after setup: $OUT"
echo "  setup done in $((SECONDS - T0))s"

section "1. smuggling the peer-identity header through iptables-redirected traffic"
spoof_check() { # id name curl-args...
    local id=$1 name=$2 peer forged=no; shift 2
    run_cap as_app "$NS_A" curl -sS --max-time 5 "$@"
    peer=$(field peer "$OUT")
    case "$OUT" in *kube-system*) forged=YES;; esac
    record "$id" "$name" "200 peer=$SPIFFE_A forged=no" "$([ "$RC" = 0 ] && echo 200 || echo "rc=$RC") peer=$peer forged=$forged" 1
}
spoof_check H1 "HTTP/1.1, forged header" -H "x-pqmesh-peer-identity: $FORGED" "http://$IP_B:8080/h1"
spoof_check H2 "HTTP/1.1, mixed case + a second copy" -H "X-PQMesh-Peer-Identity: $FORGED" -H "x-pqmesh-peer-identity: $FORGED" "http://$IP_B:8080/h1-dup"
spoof_check H3 "HTTP/2 prior knowledge, forged header" --http2-prior-knowledge -H "x-pqmesh-peer-identity: $FORGED" "http://$IP_B:8080/h2"
LONG_PATH=/$(head -c 9216 /dev/zero | tr '\0' a)
spoof_check H6 "9 KiB request line (past the sniff window), forged header" -H "x-pqmesh-peer-identity: $FORGED" "http://$IP_B:8080$LONG_PATH"
before=$(b_reqs)
run_cap in_ns "$NS_C" curl -sS --max-time 5 -H "x-pqmesh-peer-identity: $SPIFFE_A" "http://$IP_B:8080/plain"
after=$(b_reqs)
record H4 "unmeshed pod, plaintext claiming shop/web (STRICT)" refused "$([ "$RC" = 0 ] && echo "answered: $(printf '%s' "$OUT" | head -c 60)" || echo refused)" $((after - before - 1))
before=$(b_reqs)
run_cap in_ns "$NS_C" curl -sS --max-time 5 -H "x-pqmesh-peer-identity: $SPIFFE_A" "http://$IP_B:15006/inbound-port"
after=$(b_reqs)
record H5 "unmeshed pod, straight at B's inbound port 15006" refused "$([ "$RC" = 0 ] && echo answered || echo refused)" $((after - before - 1))

section "2. network partition between pod-a and pod-b under steady traffic (${PARTITION_SECS} s)"
# A steady client in pod A: one request per 200 ms, each on a new connection, 3 s timeout;
# writes "<start, ms since the epoch> <status> <duration ms>" per request.
STEADY='import sys, time, urllib.request
url, secs = sys.argv[1], float(sys.argv[2]); t0 = time.monotonic()
while time.monotonic() - t0 < secs:
    t, wall = time.monotonic(), int(time.time() * 1000)
    try:
        code = urllib.request.urlopen(url, timeout=3).status
    except Exception as e:
        code = "ERR"
    print(wall, code, int((time.monotonic() - t) * 1000), flush=True)
    time.sleep(max(0, 0.2 - (time.monotonic() - t)))'
TOTAL=$((PARTITION_SECS + 12))
as_app "$NS_A" python3 -c "$STEADY" "http://$IP_B:8080/steady" "$TOTAL" >"$WORK/logs/steady-partition.log" 2>&1 &
PID_OF[steady]=$!
sleep 3
unreach0=$(metric "$NS_A" pqmesh_connections_total 'direction="outbound"' 'outcome="peer_unreachable"')
now_ms() { date +%s%3N; }
cut_ms=$(now_ms)
ip -n "$NS_SW" link set veth-b down
echo "  veth-b down"
sleep "$PARTITION_SECS"
up_ms=$(now_ms)
ip -n "$NS_SW" link set veth-b up
echo "  veth-b up"
wait "${PID_OF[steady]}" || true
unset 'PID_OF[steady]'
unreach1=$(metric "$NS_A" pqmesh_connections_total 'direction="outbound"' 'outcome="peer_unreachable"')
# Before: ended before the cut. During: started after it and ended before the link came back.
# After: started more than 3 s after the link came back.
read -r before_ok before_n during_fail during_n after_ok after_n slowest first_ok_ms < <(awk -v cut="$cut_ms" -v up="$up_ms" '
    { t=$1; ok=($2 == 200) }
    t + $3 < cut { bn++; if (ok) bo++ }
    t > cut && t + $3 < up { dn++; if (!ok) df++; if ($3 > slow) slow=$3 }
    t + $3 >= up && ok && first == "" { first = t + $3 - up }
    t >= up + 3000 { an++; if (ok) ao++ }
    END { print bo+0, bn+0, df+0, dn+0, ao+0, an+0, slow+0, (first == "" ? -1 : first) }' "$WORK/logs/steady-partition.log")
record P1 "before the partition: all served" "$before_n/$before_n" "$before_ok/$before_n" "$before_ok"
[ "$during_n" -ge 2 ] || die "only $during_n requests fell inside the partition window (PQMESH_PARTITION_SECS=$PARTITION_SECS too short?)"
record P2 "during: every request fails, within the client's 3 s timeout" "fail ${during_n}/${during_n}" "fail ${during_fail}/${during_n}" $((during_n - during_fail))
echo "         slowest failing request during the partition: ${slowest} ms; A's peer_unreachable $unreach0 -> $unreach1"
record P3 "link back: served again within 4 s (one client timeout), no restart" "recovered" "$([ "$first_ok_ms" -ge 0 ] && [ "$first_ok_ms" -le 4000 ] && echo recovered || echo "first ok after ${first_ok_ms} ms")" 1
echo "         first success answered ${first_ok_ms} ms after the link came back"
record P4 "after recovery (+3 s onwards): all served" "$after_n/$after_n" "$after_ok/$after_n" "$after_ok"

section "3. control plane cut off from both pods (${CP_CUT_SECS} s) under steady traffic"
as_app "$NS_A" python3 -c "$STEADY" "http://$IP_B:8080/steady-cp" "$((CP_CUT_SECS + 4))" >"$WORK/logs/steady-cp.log" 2>&1 &
PID_OF[steady]=$!
sleep 1
ip -n "$NS_SW" link set veth-cp down
sleep "$CP_CUT_SECS"
ip -n "$NS_SW" link set veth-cp up
wait "${PID_OF[steady]}" || true
unset 'PID_OF[steady]'
n=$(wc -l <"$WORK/logs/steady-cp.log"); ok=$(awk '$2 == 200' "$WORK/logs/steady-cp.log" | wc -l)
record C1 "A -> B while the control plane is unreachable (new connection each)" "$n/$n" "$ok/$n" "$ok"
run_cap as_app "$NS_A" curl -sS --max-time 5 "http://$IP_B:8080/after-cp"
record C2 "after the link returns" 200 "$([ "$RC" = 0 ] && echo 200 || echo "rc=$RC")" 1

section "4. control plane stopped (${CP_STOP_SECS} s) while A calls B by Service name and by pod IP"
# Client in pod A: alternately by Service name (resolved to the ClusterIP) and by pod IP, one
# request per 100 ms, each on a new connection, 3 s timeout; "<ms> <svc|pod> <status>" per request.
LOOP='import socket, sys, time, urllib.request
names = {sys.argv[1]: sys.argv[2]}
real = socket.getaddrinfo
socket.getaddrinfo = lambda host, *a, **k: real(names.get(host, host), *a, **k)
urls = [("svc", "http://%s/steady-svc" % sys.argv[1]), ("pod", "http://%s:8080/steady-pod" % sys.argv[3])]
stop, i = sys.argv[4], 0
while True:
    try:
        open(stop).close(); break
    except OSError:
        pass
    kind, url = urls[i % 2]; i += 1
    t = time.monotonic(); wall = int(time.time() * 1000)
    try:
        code = urllib.request.urlopen(url, timeout=3).status
    except Exception as e:
        code = "ERR:" + type(e).__name__
    print(wall, kind, code, flush=True)
    time.sleep(max(0, 0.1 - (time.monotonic() - t)))'
# /ready poller (loopback, every 500 ms): "<ms> <status>".
POLL='import sys, time, urllib.request, urllib.error
stop = sys.argv[1]
while True:
    try:
        open(stop).close(); break
    except OSError:
        pass
    wall = int(time.time() * 1000)
    try:
        code = urllib.request.urlopen("http://127.0.0.1:15000/ready", timeout=2).status
    except urllib.error.HTTPError as e:
        code = e.code
    except Exception as e:
        code = "ERR:" + type(e).__name__
    print(wall, code, flush=True)
    time.sleep(0.5)'
connected() { metric "$1" pqmesh_control_plane_connected; }
for i in $(seq 150); do
    [ "$(connected "$NS_A")" = 1 ] && [ "$(connected "$NS_B")" = 1 ] && break; sleep 0.2
done
[ "$(connected "$NS_A")" = 1 ] && [ "$(connected "$NS_B")" = 1 ] || die "sidecars not connected to the control plane before the stop"
run_cap as_app "$NS_A" curl -sS --max-time 5 --resolve "$SVC_NAME:80:$SVC_IP" "http://$SVC_NAME/warm-svc"
[ "$RC" = 0 ] && [ "$(field peer "$OUT")" = "$SPIFFE_A" ] || die "A -> B by Service name does not work: $OUT"
STOP=$WORK/stop-loops
as_app "$NS_A" python3 -c "$LOOP" "$SVC_NAME" "$SVC_IP" "$IP_B" "$STOP" >"$WORK/logs/loop-stop.log" 2>&1 &
PID_OF[loop]=$!
in_ns "$NS_A" python3 -c "$POLL" "$STOP" >"$WORK/logs/ready-a.log" 2>&1 &
PID_OF[poll-a]=$!
in_ns "$NS_B" python3 -c "$POLL" "$STOP" >"$WORK/logs/ready-b.log" 2>&1 &
PID_OF[poll-b]=$!
lines_a=$(wc -l <"$WORK/logs/sidecar-a.log") lines_b=$(wc -l <"$WORK/logs/sidecar-b.log")
sleep 2
stop_ms=$(now_ms)
kill -KILL "${PID_OF[cp]}"; wait "${PID_OF[cp]}" 2>/dev/null || true
echo "  control plane killed"
sleep $((CP_STOP_SECS / 2))
during="$(connected "$NS_A") $(connected "$NS_B")"
sleep $((CP_STOP_SECS - CP_STOP_SECS / 2))
start_ms=$(now_ms)
start_cp
echo "  control plane restarted after $(( (start_ms - stop_ms) / 1000 )) s"
for i in $(seq 225); do
    [ "$(connected "$NS_A")" = 1 ] && [ "$(connected "$NS_B")" = 1 ] && break; sleep 0.2
done
back_ms=$(now_ms)
after="$(connected "$NS_A") $(connected "$NS_B")"
sleep 2
touch "$STOP"
for k in loop poll-a poll-b; do wait "${PID_OF[$k]}" || true; unset "PID_OF[$k]"; done
read -r svc_ok svc_n pod_ok pod_n < <(awk -v a="$stop_ms" -v b="$start_ms" '$1 >= a && $1 < b {
    n[$2]++; if ($3 == 200) ok[$2]++ } END { print ok["svc"]+0, n["svc"]+0, ok["pod"]+0, n["pod"]+0 }' "$WORK/logs/loop-stop.log")
all_n=$(wc -l <"$WORK/logs/loop-stop.log"); all_ok=$(awk '$3 == 200' "$WORK/logs/loop-stop.log" | wc -l)
polls=$(cat "$WORK/logs/ready-a.log" "$WORK/logs/ready-b.log" | wc -l)
polls_ok=$(cat "$WORK/logs/ready-a.log" "$WORK/logs/ready-b.log" | awk '$2 == 200' | wc -l)
[ "$svc_n" -ge 10 ] && [ "$pod_n" -ge 10 ] || die "only $svc_n + $pod_n requests fell inside the stop (PQMESH_CP_STOP_SECS=$CP_STOP_SECS too short?)"
record O1 "by Service name ($SVC_NAME -> $SVC_IP:80) while the control plane is stopped" "$svc_n/$svc_n" "$svc_ok/$svc_n" "$svc_ok"
record O2 "by pod IP ($IP_B:8080) while the control plane is stopped" "$pod_n/$pod_n" "$pod_ok/$pod_n" "$pod_ok"
record O3 "all requests, 2 s before the stop until 2 s after both sidecars reconnected" "$all_n/$all_n" "$all_ok/$all_n" "$all_ok"
record O4 "/ready of A and B polled every 0.5 s throughout: always 200" "$polls/$polls" "$polls_ok/$polls" 0
record O5 "pqmesh_control_plane_connected on A and B during the stop / after" "0 0 / 1 1" "$during / $after" 0
echo "         both sidecars reconnected $(( back_ms - start_ms )) ms after the control plane was back"
outage_lines() { tail -n +"$(( $2 + 1 ))" "$WORK/logs/sidecar-$1.log" | grep -c "$3" || true; }
logs="$(outage_lines a "$lines_a" 'control plane unreachable'),$(outage_lines a "$lines_a" 'control plane reachable again') $(outage_lines b "$lines_b" 'control plane unreachable'),$(outage_lines b "$lines_b" 'control plane reachable again')"
record O6 "log lines per sidecar: one WARN at the start, one INFO at the end (A B)" "1,1 1,1" "$logs" 0

section "results"
echo "| check | expected | actual | reached B's app | result |"
echo "|---|---|---|---:|---|"
for i in "${!R_ID[@]}"; do
    printf '| %s %s | %s | %s | %s | %s |\n' "${R_ID[$i]}" "${R_NAME[$i]}" "${R_EXP[$i]}" "${R_ACT[$i]}" "${R_REACH[$i]}" "${R_RES[$i]}"
done
echo "$(( ${#R_ID[@]} - FAILS ))/${#R_ID[@]} passed in $((SECONDS - T0)) s"
[ "$FAILS" = 0 ] || die "$FAILS check(s) failed"
