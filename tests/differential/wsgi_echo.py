"""WSGI echo app of the differential suite (tests/tests/e2e/differential.rs).

Every request is answered with, and logged to stdout as, one `DIFF {json}` line of what the WSGI
server handed the app: REQUEST_METHOD, PATH_INFO, the raw target when the server exposes one,
environ['HTTP_X_PQMESH_PEER_IDENTITY'] (how a WSGI app reads the caller's identity), the
Authorization header and every HTTP_* key. Stock servers only: `python3 wsgi_echo.py NAME PORT...`
runs it under the stdlib's wsgiref; gunicorn imports `wsgi_echo:app` (name from DIFF_SERVER).
"""
import json
import os
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

PRINT = threading.Lock()


def app(environ, start_response):
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > 0:
        environ["wsgi.input"].read(length)
    headers = [[k, v] for k, v in environ.items() if k.startswith("HTTP_")]
    for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(k):
            headers.append([k, environ[k]])
    # gunicorn derives SERVER_PORT from the Host header; its socket knows the real port.
    sock = environ.get("gunicorn.socket")
    port = sock.getsockname()[1] if sock else int(environ.get("SERVER_PORT") or 0)
    record = {
        "server": os.environ.get("DIFF_SERVER", "wsgi"),
        "port": port,
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO"),
        "raw_path": environ.get("RAW_URI") or environ.get("REQUEST_URI"),
        "identity": environ.get("HTTP_X_PQMESH_PEER_IDENTITY"),
        "authorization": environ.get("HTTP_AUTHORIZATION"),
        "headers": headers,
        "proto": environ.get("SERVER_PROTOCOL"),
    }
    line = json.dumps(record)
    with PRINT:  # wsgiref serves each port from its own thread
        sys.stdout.write("DIFF " + line + "\n")
        sys.stdout.flush()
    body = (line + "\n").encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


if __name__ == "__main__":
    os.environ["DIFF_SERVER"] = sys.argv[1]
    for port in sys.argv[2:]:
        server = make_server("127.0.0.1", int(port), app, handler_class=QuietHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    threading.Event().wait()
