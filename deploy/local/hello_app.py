#!/usr/bin/env python3
"""Workload B's app for deploy/local/demo.sh: a tiny HTTP server.

Answers every GET (and HEAD) with "hello from workload B (shop/api); caller: <identity>", where
<identity> is the x-pqmesh-peer-identity header B's sidecar put on the request (the caller's
SPIFFE ID), or "none" when the request carries no such header. It also prints one line per
request to stdout (the app's log), and appends one line per request to --requests-file, so the
demo can count what actually reached the app (and prove that a refused peer's request never did).

usage: hello_app.py [--host 127.0.0.1] --port PORT --requests-file PATH
"""

import argparse
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GREETING = "hello from workload B (shop/api)"
PEER_IDENTITY_HEADER = "x-pqmesh-peer-identity"


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

        def _reply(self, with_body: bool) -> None:
            body = f"{GREETING}; caller: {self._caller()}\n".encode()
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

        def log_request(self, code="-", size="-") -> None:
            # One line per request, flushed immediately: the demo counts the file's lines.
            line = (
                f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.command} {self.path} {code} "
                f"caller={self._caller()}\n"
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
