"""The little the shop's services share: a threaded HTTP/1.1 JSON server on 127.0.0.1 and a
SQLite database that only its own service opens (database per service). Python's standard
library only."""
import argparse
import json
import re
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Service:
    """Routes (method, regex) -> handler(match, body, headers) -> (status, object)."""

    def __init__(self, name, db_path, schema):
        self.name = name
        self.lock = threading.Lock()  # one writer at a time; SQLite serialises anyway
        self.db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(schema)
        self.routes = []

    def route(self, method, pattern):
        def register(fn):
            self.routes.append((method, re.compile(pattern + "$"), fn))
            return fn
        return register

    def serve(self, port):
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = service.name + "/1"

            def handle_any(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    return self.reply(400, {"error": "body is not JSON"})
                path = self.path.split("?", 1)[0]
                for method, rx, fn in service.routes:
                    m = rx.match(path)
                    if m and method == self.command:
                        try:
                            return self.reply(*fn(m, body, self.headers))
                        except Exception as e:  # noqa: BLE001 - a service answers, it does not die
                            return self.reply(500, {"error": str(e)})
                self.reply(404, {"error": "no such endpoint", "path": path})

            def reply(self, status, obj):
                data = (json.dumps(obj) + "\n").encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = handle_any

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.daemon_threads = True
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        print("%s listening on 127.0.0.1:%d" % (self.name, port), flush=True)
        server.serve_forever()


def arguments(description, extra=()):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--db", required=True, help="this service's own SQLite file")
    for args, kw in extra:
        ap.add_argument(*args, **kw)
    return ap.parse_args()
