#!/usr/bin/env python3
"""Raw-socket clients for tests/netns/run.sh (run inside a pod's network namespace).

  rawclient.py upgrade HOST PORT   HTTP/1.1 Upgrade: websocket, expect 101, then echo bytes
  rawclient.py echo HOST PORT N    send N random bytes to a TCP echo server, expect them back
  rawclient.py h2 HOST PORT PATH.. HTTP/2 prior knowledge, one stream per PATH, all concurrently
                                   on ONE connection; prints each response body

Prints one line of evidence; exit status 0 = pass, 1 = fail.
"""
import os
import socket
import sys
import threading
import time

TIMEOUT = 8.0


def recv_exactly(sock, n, deadline):
    buf = bytearray()
    while len(buf) < n:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(min(65536, n - len(buf)))
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def eof_after_shutdown(sock):
    """Half-close our side; report whether the peer's EOF comes back (informational)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(3.0)
        extra = sock.recv(1)
        return "eof" if extra == b"" else "unexpected-bytes"
    except socket.timeout:
        return "no-eof-within-3s"
    except OSError as e:
        return f"error:{e.errno}"


def upgrade(host, port):
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head = bytearray()
    while b"\r\n\r\n" not in head and time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            break
        if not chunk:
            break
        head += chunk
    status_line = bytes(head).split(b"\r\n", 1)[0].decode("latin-1", "replace")
    if " 101 " not in status_line + " ":
        print(f"status={status_line!r} (expected 101)")
        return 1
    if b"\r\n\r\n" not in head:
        print(f"status={status_line!r} but the response head never ended")
        return 1
    rest = bytes(head).split(b"\r\n\r\n", 1)[1]
    if rest:
        print(f"status={status_line!r} but {len(rest)} unexpected bytes followed the 101 head")
        return 1
    ok = True
    sizes = []
    for n in (5, 4000, 32768):
        payload = os.urandom(n)
        s.sendall(payload)
        got = recv_exactly(s, n, time.monotonic() + TIMEOUT)
        sizes.append(f"{len(got)}/{n}")
        if got != payload:
            ok = False
            break
    half = eof_after_shutdown(s)
    s.close()
    print(f"status={status_line!r} echoed={','.join(sizes)} bytes match={ok} after-half-close={half}")
    return 0 if ok else 1


def echo(host, port, n):
    data = os.urandom(n)
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    err = []

    def sender():
        try:
            s.sendall(data)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t0 = time.monotonic()
    t.start()
    got = recv_exactly(s, n, time.monotonic() + TIMEOUT)
    t.join(1)
    dt = time.monotonic() - t0
    half = eof_after_shutdown(s)
    s.close()
    ok = got == data and not err
    print(f"sent={n} received={len(got)} identical={got == data} in {dt:.2f}s after-half-close={half}"
          + (f" send-error={err[0]}" if err else ""))
    return 0 if ok else 1


# --- a minimal HTTP/2 (prior knowledge) client: enough for GETs with small responses -----------

def frame(ftype, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


def hpack_literal(index, value):
    """Literal header field without indexing, name from the static table (RFC 7541 6.2.2)."""
    v = value.encode()
    assert index < 15 and len(v) < 127
    return bytes([index, len(v)]) + v


def h2(host, port, paths):
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0)
    streams = {}
    for i, path in enumerate(paths):
        sid = 1 + 2 * i
        block = b"\x82\x86" + hpack_literal(4, path) + hpack_literal(1, host)  # GET http :path :authority
        out += frame(0x1, 0x4 | 0x1, sid, block)  # HEADERS, END_HEADERS | END_STREAM
        streams[sid] = {"path": path, "data": b"", "done": False, "headers": 0}
    s.sendall(out)  # every request is in flight before any response is read
    buf = b""
    deadline = time.monotonic() + TIMEOUT
    problem = None
    while not all(st["done"] for st in streams.values()) and problem is None:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                chunk = None
            if not chunk:
                problem = "timeout" if chunk is None else "connection closed"
                break
            buf += chunk
        if problem:
            break
        n = int.from_bytes(buf[:3], "big")
        ftype, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload, buf = buf[9:9 + n], buf[9 + n:]
        if ftype == 0x4 and not flags & 0x1:  # SETTINGS -> ACK
            s.sendall(frame(0x4, 0x1, 0))
        elif ftype == 0x6 and not flags & 0x1:  # PING -> ACK
            s.sendall(frame(0x6, 0x1, 0, payload))
        elif ftype == 0x7:  # GOAWAY
            problem = f"GOAWAY error={int.from_bytes(payload[4:8], 'big')}"
        elif ftype == 0x3:  # RST_STREAM
            problem = f"RST_STREAM stream={sid} error={int.from_bytes(payload[:4], 'big')}"
        elif sid in streams and ftype in (0x0, 0x1):
            st = streams[sid]
            if ftype == 0x0:
                if flags & 0x8:  # PADDED
                    payload = payload[1:len(payload) - payload[0]]
                st["data"] += payload
                if payload:
                    s.sendall(frame(0x8, 0, 0, len(payload).to_bytes(4, "big")))
            else:
                st["headers"] += 1
            if flags & 0x1:
                st["done"] = True
    s.close()
    ok = problem is None
    for sid, st in sorted(streams.items()):
        body = st["data"].decode("utf-8", "replace").strip()
        print(f"stream {sid} {st['path']}: {body or '(no body)'}")
        ok = ok and st["done"] and f"path={st['path']} " in body
    print(f"streams={len(streams)} on one connection, all complete={ok}" + (f" problem={problem}" if problem else ""))
    return 0 if ok else 1


def main(argv):
    try:
        if len(argv) == 4 and argv[1] == "upgrade":
            return upgrade(argv[2], int(argv[3]))
        if len(argv) == 5 and argv[1] == "echo":
            return echo(argv[2], int(argv[3]), int(argv[4]))
        if len(argv) >= 5 and argv[1] == "h2":
            return h2(argv[2], int(argv[3]), argv[4:])
    except OSError as e:
        print(f"error: {e!r}")
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
