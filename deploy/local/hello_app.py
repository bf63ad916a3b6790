#!/usr/bin/env python3
"""Workload B's app for deploy/local/demo.sh: a tiny HTTP server on 127.0.0.1.

Answers every GET (and HEAD) with "hello from workload B (shop/api)". Prints nothing per
request; instead it appends one line per request to --requests-file, so the demo can count
what actually reached the app (and prove that a refused peer's request never did).

usage: hello_app.py --port PORT --requests-file PATH
"""

import argparse
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"hello from workload B (shop/api)\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests-file", required=True)
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        server_version = "hello-app/1"

        def _reply(self, with_body: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            if with_body:
                self.wfile.write(BODY)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            self._reply(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(False)

        def log_request(self, code="-", size="-") -> None:
            # One line per request, flushed immediately: the demo counts these lines.
            line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.command} {self.path} {code}\n"
            with open(args.requests_file, "a", encoding="utf-8") as f:
                f.write(line)

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
