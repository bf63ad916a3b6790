#!/usr/bin/env python3
"""Workload B's app for deploy/local/demo.sh: a tiny HTTP server.

Answers every GET, HEAD and POST, on any path (the demo uses /orders/...), with

    hello from workload B (shop/api); caller: <identity>[; token: <what the bearer token is>]

where <identity> is the x-pqmesh-peer-identity header B's sidecar put on the request (the caller's
SPIFFE ID), or "none" when the request carries no such header. When the request has
`Authorization: Bearer <token>`, the app says what it received: for a JWT its header's `typ` and
the claims that matter (read from `token_introspection` for an RFC 9701 introspection response,
the JWT B's sidecar swaps in for a phantom token), e.g.
`token: JWT typ=token-introspection+jwt scope="orders:read" client_id=shop-client tenant=acme`;
for anything else `token: opaque (<n> chars)`. The JWT is only decoded (base64url), not verified:
B's sidecar verified it before forwarding the request, which is the point of the mesh.

It also prints one line per request to stdout (the app's log), and appends one line per request
to --requests-file, so the demo can count what actually reached the app (and prove that a refused
request never did).

usage: hello_app.py [--host 127.0.0.1] --port PORT --requests-file PATH
"""

import argparse
import base64
import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GREETING = "hello from workload B (shop/api)"
PEER_IDENTITY_HEADER = "x-pqmesh-peer-identity"
MAX_BODY = 1 << 20


def b64url_json(part: str):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def describe_token(authorization: str) -> str:
    """What the app received in `Authorization` ("" when there is no bearer token)."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return ""
    parts = token.split(".")
    if len(parts) != 3:
        return f"opaque ({len(token)} chars)"
    try:
        header, payload = b64url_json(parts[0]), b64url_json(parts[1])
    except (ValueError, TypeError):
        return f"undecodable JWT ({len(token)} chars)"
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return f"undecodable JWT ({len(token)} chars)"
    # RFC 9701: the token's claims are inside `token_introspection`; a plain JWT has them on top.
    claims = payload.get("token_introspection")
    if not isinstance(claims, dict):
        claims = payload
    out = [f"JWT typ={header.get('typ', '-')}"]
    if "scope" in claims:
        out.append(f'scope="{claims["scope"]}"')
    for name in ("client_id", "tenant"):
        if name in claims:
            out.append(f"{name}={claims[name]}")
    if "aud" in payload:
        out.append(f"aud={payload['aud']}")
    return " ".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests-file", required=True)
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        server_version = "hello-app/1"

        def _caller(self) -> str:
            # The sidecar replaces any client-sent copy, so this is the authenticated peer.
            return self.headers.get(PEER_IDENTITY_HEADER) or "none"

        def _token(self) -> str:
            return describe_token(self.headers.get("Authorization") or "")

        def _reply(self, with_body: bool) -> None:
            text = f"{GREETING}; caller: {self._caller()}"
            token = self._token()
            if token:
                text += f"; token: {token}"
            body = f"{text}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            self._reply(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(False)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if 0 < length <= MAX_BODY:
                self.rfile.read(length)  # a new order; the demo's app keeps nothing
            self._reply(True)

        def log_request(self, code="-", size="-") -> None:
            # One line per request, flushed immediately: the demo counts the file's lines.
            token = self._token()
            line = (
                f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.command} {self.path} {code} "
                f"caller={self._caller()}" + (f" token={token}" if token else "") + "\n"
            )
            with open(args.requests_file, "a", encoding="utf-8") as f:
                f.write(line)
            print(f"request: {line.rstrip()}", flush=True)

        def log_message(self, format, *a) -> None:  # noqa: A002 - keep stderr quiet
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def stop(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"hello app listening on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
