#!/usr/bin/env bash
# Packet-level proof that sidecars negotiate the hybrid group: run the control plane and two
# sidecars (real binaries) in two network namespaces joined by a veth pair, capture the handshake
# on the veth with tcpdump, and have tshark read the key_share group of the ClientHello and the
# ServerHello: both must be 0x11ec (4588, X25519MLKEM768). Needs root, iproute2, tcpdump, tshark.
# Loopback is not used because this machine's kernel does not deliver loopback packets to captures.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${PQMESH_BIN_DIR:-target/debug}
fail() { echo "capture_keyshare: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces and packet capture)"
for tool in ip tcpdump tshark python3; do command -v "$tool" >/dev/null || fail "$tool is not installed (./test.sh installs it)"; done
[ -x "$BIN/pqmesh-sidecar" ] && [ -x "$BIN/pqmesh-control-plane" ] || fail "build first: cargo build --bins"

TAG="pqcap$$"; NA="${TAG}a"; NB="${TAG}b"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NA" 2>/dev/null || true
  ip netns del "$NB" 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add "$NA"; ip netns add "$NB"
ip link add "${TAG}va" type veth peer name "${TAG}vb"
ip link set "${TAG}va" netns "$NA"; ip link set "${TAG}vb" netns "$NB"
ip -n "$NA" addr add 10.213.0.1/24 dev "${TAG}va"; ip -n "$NB" addr add 10.213.0.2/24 dev "${TAG}vb"
for ns in "$NA" "$NB"; do ip -n "$ns" link set lo up; done
ip -n "$NA" link set "${TAG}va" up; ip -n "$NB" link set "${TAG}vb" up

mkdir -m 700 "$WORK/cp"
TOKA="capture-web-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
TOKB="capture-api-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
cat > "$WORK/cp/bootstrap-tokens.yaml" <<YAML
tokens:
  - { token: "$TOKA", namespace: shop, serviceAccount: web }
  - { token: "$TOKB", namespace: shop, serviceAccount: api }
YAML
chmod 600 "$WORK/cp/bootstrap-tokens.yaml"

wait_http() { for _ in $(seq 1 100); do ip netns exec "$1" python3 -c "import urllib.request,sys; urllib.request.urlopen('$2', timeout=1)" 2>/dev/null && return 0; sleep 0.1; done; fail "$2 not ready (logs in $WORK)"; }

# Control plane and workload B (api) in namespace B; workload A (web) in namespace A.
ip netns exec "$NB" env PQMESH_GRPC_ADDR=10.213.0.2:15012 PQMESH_ADMIN_ADDR=127.0.0.1:15014 \
  "$BIN/pqmesh-control-plane" --local "$WORK/cp" 2>"$WORK/cp.log" & PIDS+=($!)
wait_http "$NB" http://127.0.0.1:15014/ready
ip netns exec "$NB" python3 -c "
import socket
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 8080)); s.listen()
while True:
    c,_=s.accept(); d=c.recv(100); c.sendall(d); c.close()" & PIDS+=($!)
ip netns exec "$NB" env PQMESH_CONTROL_PLANE_ADDR=10.213.0.2:15012 PQMESH_TRUST_BUNDLE="$WORK/cp/trust-bundle.pem" \
  PQMESH_BOOTSTRAP_TOKEN="$TOKB" PQMESH_INBOUND_ADDR=10.213.0.2:15006 PQMESH_INBOUND_APP_ADDR=127.0.0.1:8080 \
  PQMESH_INBOUND_ALLOW=spiffe://cluster.local/ns/shop/sa/web "$BIN/pqmesh-sidecar" 2>"$WORK/b.log" & PIDS+=($!)
ip netns exec "$NA" env PQMESH_CONTROL_PLANE_ADDR=10.213.0.2:15012 PQMESH_TRUST_BUNDLE="$WORK/cp/trust-bundle.pem" \
  PQMESH_BOOTSTRAP_TOKEN="$TOKA" PQMESH_OUTBOUND_ADDR=127.0.0.1:15001 PQMESH_OUTBOUND_PEER_ADDR=10.213.0.2:15006 \
  PQMESH_OUTBOUND_PEER_ID=spiffe://cluster.local/ns/shop/sa/api "$BIN/pqmesh-sidecar" 2>"$WORK/a.log" & PIDS+=($!)
wait_http "$NB" http://127.0.0.1:15000/ready
wait_http "$NA" http://127.0.0.1:15000/ready

ip netns exec "$NB" tcpdump -i "${TAG}vb" --immediate-mode -U -n -Z root -w "$WORK/handshake.pcap" tcp port 15006 2>"$WORK/tcpdump.log" & CAP=$!
for _ in $(seq 1 50); do grep -q "listening on" "$WORK/tcpdump.log" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$WORK/tcpdump.log" || fail "tcpdump did not start: $(cat "$WORK/tcpdump.log")"

REPLY=$(ip netns exec "$NA" python3 -c "
import socket
c=socket.create_connection(('127.0.0.1', 15001)); c.sendall(b'ping'); print(c.recv(100).decode())")
[ "$REPLY" = ping ] || fail "no echo through the sidecars (got '$REPLY')"
sleep 0.5; kill -TERM "$CAP"; wait "$CAP" 2>/dev/null || true

FIELDS=$(tshark -r "$WORK/handshake.pcap" -d tcp.port==15006,tls -Y 'tls.handshake.type == 1 || tls.handshake.type == 2' \
  -T fields -e tls.handshake.type -e tls.handshake.extensions_key_share_group 2>/dev/null)
echo "$FIELDS" | sed 's/^1\t/ClientHello key_share group: /; s/^2\t/ServerHello key_share group: /'
[ "$(echo "$FIELDS" | wc -l)" = 2 ] || fail "expected one ClientHello and one ServerHello, tshark saw: $FIELDS"
while IFS=$'\t' read -r type group; do
  case "$group" in 4588|0x11ec|0x000011ec) ;; *) fail "handshake type $type offered/selected key_share group '$group', not 0x11ec";; esac
done <<< "$FIELDS"
echo "capture_keyshare: OK (X25519MLKEM768 = 0x11ec in both hellos on the wire)"
