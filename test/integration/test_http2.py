#!/usr/bin/env python3
"""HTTP/2 from the client (prior knowledge, and ALPN h2 on mtls listeners) to HTTP/1.1 upstreams,
with real clients: curl --http2-prior-knowledge, h2load, nghttp, and the h2 library for raw frames.

- a stream is a request like an HTTP/1.1 one: the upstream sees HTTP/1.1 with host = :authority,
  x-forwarded-*, x-request-id, cookie crumbs joined; bodies with and without content-length
  arrive intact (the latter chunked); HEAD/204/304, a 3 MiB response, 100-continue; a response
  the upstream breaks off ends in a reset stream; SIGTERM: GOAWAY, the stream in flight finishes;
- many concurrent streams on one connection each get their own response, counted in the
  metrics and the access log;
- pilotfish's own answers (404 no_route, 431, 413, 405 CONNECT, 400 invalid_host, 503) are
  HTTP/2 responses with x-pilotfish-error; a stream answered before its body came is not left
  open; malformed messages get RST_STREAM PROTOCOL_ERROR and reach no upstream, and the
  connection goes on serving;
- `http2: false`; `pilotfish check` of the http2 key; max_concurrent_streams in SETTINGS and
  enforced per stream; ALPN h2 and http/1.1 on an mtls listener; response and request trailers;
- rapid reset (CVE-2023-44487) ends the offending connection only; a stream reset while its
  upstream is slow gives its upstream connection back;
- floods (CONTINUATION, SETTINGS/PING, empty DATA frames), an HPACK bomb, flow-control windows
  overflowed, a client that never reads a large response: each ends the attacker's connection or
  stream (memory bounded meanwhile) while honest clients are served.

Run with Debian's interpreter (/usr/bin/python3): it has python3-h2 (meson does)."""

import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import unittest
import zlib

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import upstream as up  # noqa: E402

PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
CANCEL = h2.errors.ErrorCodes.CANCEL
FLOW_CONTROL_ERROR = h2.errors.ErrorCodes.FLOW_CONTROL_ERROR
ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def sid(name):
    return "spiffe://test.local/ns/test/sa/" + name


def header_values(req, name):
    """All values of a header as the upstream received it."""
    return [v for n, v in req["headers"] if n.lower() == name.lower()]


def run(args, stdin=None, timeout=20):
    r = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# An HTTP/2 client on the h2 library, over a plain or TLS socket
# ---------------------------------------------------------------------------------------------

class H2Stream:
    def __init__(self):
        self.status = None
        self.headers = []        # the final response's fields, pseudo-header fields included
        self.interim = []
        self.body = bytearray()
        self.trailers = None     # [(name, value)] of a TrailersReceived
        self.ended = False       # END_STREAM received
        self.reset = None        # the error code of a RST_STREAM received

    def header(self, name):
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def json(self):
        return json.loads(bytes(self.body).decode("latin-1"))

    def __repr__(self):
        return "<H2Stream status=%s reset=%s ended=%s headers=%r body=%r trailers=%r>" % (
            self.status, self.reset, self.ended, self.headers, bytes(self.body[:300]), self.trailers)


class H2Client:
    """One HTTP/2 connection (prior knowledge, or over `sock` after TLS with ALPN h2).
    strict=False: headers go out as given (no validation, no lower-casing), malformed or not."""

    def __init__(self, port=None, sock=None, strict=True, timeout=5.0):
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.timeout = timeout
        if strict:
            cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        else:
            cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                            validate_outbound_headers=False, normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.streams = {}
        self.goaway = None           # (error_code, last_stream_id) of a GOAWAY received
        self.goaway_data = None      # its debug data
        self.closed = False          # EOF or reset from the server
        self.settings_received = False
        self.conn.initiate_connection()
        self.flush()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _stream(self, sid):
        return self.streams.setdefault(sid, H2Stream())

    def pump(self, deadline):
        """Reads once (waiting until deadline at most) and handles the events. False at EOF."""
        if self.closed:
            return False
        pending = getattr(self.sock, "pending", None)
        if not (pending and pending()):
            import select
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return True
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            data = b""
        except socket.timeout:
            return True
        if not data:
            self.closed = True
            self.close()
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            if self.goaway is None:
                raise
            # The h2 library takes no frame after a GOAWAY (not even for the streams below its
            # last_stream_id): the connection is over for this client.
            self.closed = True
            self.close()
            return False
        for ev in events:
            self.handle(ev)
        try:
            self.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
        return True

    def handle(self, ev):
        if isinstance(ev, h2.events.ResponseReceived):
            s = self._stream(ev.stream_id)
            s.headers = list(ev.headers)
            s.status = int(dict(ev.headers)[":status"])
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            self._stream(ev.stream_id).interim.append(list(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            self._stream(ev.stream_id).body += ev.data
            try:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            except h2.exceptions.StreamClosedError:
                pass
        elif isinstance(ev, h2.events.TrailersReceived):
            self._stream(ev.stream_id).trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            self._stream(ev.stream_id).ended = True
        elif isinstance(ev, h2.events.StreamReset):
            self._stream(ev.stream_id).reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (ev.error_code, ev.last_stream_id)
            self.goaway_data = ev.additional_data
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_received = True

    def wait(self, pred, timeout=None, what="condition"):
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            if pred():
                return True
            if time.monotonic() > deadline:
                raise AssertionError("HTTP/2: timed out waiting for %s; streams %r goaway %r closed %r"
                                     % (what, self.streams, self.goaway, self.closed))
            if not self.pump(deadline) and not pred():
                raise AssertionError("HTTP/2: connection closed while waiting for %s; streams %r goaway %r"
                                     % (what, self.streams, self.goaway))

    def handshake(self, timeout=None):
        self.wait(lambda: self.settings_received, timeout, "the server's SETTINGS")
        return self

    def request(self, method="GET", path="/", headers=(), body=None, authority="test.local", scheme="http",
                end_stream=True):
        """Opens a stream; returns its id. body: sent in one DATA frame (small bodies)."""
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", scheme)]
        if authority is not None:
            fields.append((":authority", authority))
        fields.append((":path", path))
        fields += list(headers)
        self._stream(sid)
        self.conn.send_headers(sid, fields, end_stream=end_stream and body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end_stream)
        self.flush()
        return sid

    def send_raw_headers(self, sid, fields, end_stream=True):
        self._stream(sid)
        self.conn.send_headers(sid, fields, end_stream=end_stream)
        self.flush()
        return sid

    def done(self, sid):
        s = self.streams.get(sid)
        return s is not None and (s.ended or s.reset is not None)

    def response(self, sid, timeout=None):
        self.wait(lambda: self.done(sid), timeout, "the end of stream %d" % sid)
        return self.streams[sid]

    def get(self, path="/", headers=(), timeout=None, **kw):
        return self.response(self.request("GET", path, headers, **kw), timeout)


# ---------------------------------------------------------------------------------------------
# One pilotfish with several listeners in front of an echo upstream
# ---------------------------------------------------------------------------------------------

class H2Test(unittest.TestCase):
    """An echo upstream and a pilotfish (1 worker, an access log) per test, listeners:
    ingress (HTTP/2 on by default), limited (max_header_bytes 2048, max_body_bytes 1000, routes
    /ok to the app and /dead to a cluster with nothing listening), noh2 (http2: false), narrow
    (max_concurrent_streams 2), brief (max_body_bytes 1000, idle_timeout and body_timeout 1s)."""

    def setUp(self):
        self.up = h.Upstream("echo", name="app")
        self.addCleanup(self.up.stop)
        self.dir = h.make_tmpdir("pf-h2-")
        self.access_log = os.path.join(self.dir, "access.log")
        route = [{"cluster": "app"}]
        policy = {
            "version": 1, "service": "it", "workers": 1, "access_log": self.access_log, "log_level": "debug",
            "admin": {"address": "127.0.0.1:0"},
            "listeners": [
                {"name": "ingress", "address": "127.0.0.1:0", "routes": route},
                {"name": "limited", "address": "127.0.0.1:0", "max_header_bytes": 2048, "max_body_bytes": 1000,
                 "routes": [{"match": {"path_prefix": "/ok"}, "cluster": "app"},
                            {"match": {"path_prefix": "/dead"}, "cluster": "dead"}]},
                {"name": "noh2", "address": "127.0.0.1:0", "http2": False, "routes": route},
                {"name": "narrow", "address": "127.0.0.1:0", "http2": {"max_concurrent_streams": 2},
                 "routes": route},
                {"name": "brief", "address": "127.0.0.1:0", "max_body_bytes": 1000, "idle_timeout": "1s",
                 "body_timeout": "1s", "routes": route},
            ],
            "clusters": [{"name": "app", "endpoints": [self.up.address]},
                         {"name": "dead", "endpoints": ["127.0.0.1:%d" % h.free_port()]}],
        }
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.pf.kill)
        self.port = self.pf.port("ingress")
        self.clients = []

    def tearDown(self):
        # The test's clients go first, as real clients would (pilotfish's drain waits a moment
        # for a client that keeps its connection open after GOAWAY).
        for c in self.clients:
            c.close()
        self.pf.stop_and_check(self)

    def h2(self, listener="ingress", strict=True, timeout=5.0, pf=None):
        c = H2Client((pf or self.pf).port(listener), strict=strict, timeout=timeout)
        self.clients.append(c)
        self.addCleanup(c.close)
        return c

    def upstream_targets(self):
        return [r["target"] for r in self.up.requests()]

    def access_lines(self, path=None):
        try:
            with open(path or self.access_log) as f:
                return [json.loads(l) for l in f.read().splitlines() if l.strip()]
        except FileNotFoundError:
            return []

    def curl(self, *args, listener="ingress", path="/", stdin=None):
        """curl --http2-prior-knowledge: (http_version, status, body bytes)."""
        out = os.path.join(self.dir, "curl-body")
        rc, stdout, err = run(["curl", "-sS", "--http2-prior-knowledge", "-o", out,
                               "-w", "%{http_version} %{response_code}"] + list(args)
                              + ["http://127.0.0.1:%d%s" % (self.pf.port(listener), path)], stdin=stdin)
        self.assertEqual(rc, 0, "curl failed: %s\n%s" % (err, self.pf.log(20)))
        with open(out, "rb") as f:
            body = f.read()
        version, status = stdout.decode().split()
        return version, int(status), body

    def requests_total(self, listener="ingress", cluster="app", code="200"):
        return int(h.sample(h.metrics(self.pf), "pilotfish_requests_total", listener=listener, route="", cluster=cluster,
                            code=code) or 0)

    def connections_total(self, listener="ingress"):
        v = h.sample(h.metrics(self.pf), "pilotfish_downstream_connections_total", listener=listener)
        self.assertIsNotNone(v, "no pilotfish_downstream_connections_total{listener=%s}" % listener)
        return int(v)


# -- 1 -----------------------------------------------------------------------------------------
class ForwardingTest(H2Test):
    def test_curl_get_reaches_the_upstream_as_http11(self):
        version, status, body = self.curl("-H", "Host: svc.test:8080", "-H", "X-Forwarded-For: 203.0.113.9",
                                          "-H", "X-Request-Id: abc-123", "-H", "Cookie: a=1",
                                          "-H", "Cookie: b=2", path="/hello/h2?x=1")
        self.assertEqual((version, status), ("2", 200), body)
        seen = json.loads(body)
        self.assertEqual(seen["method"], "GET")
        self.assertEqual(seen["target"], "/hello/h2?x=1")
        self.assertEqual(seen["version"], "HTTP/1.1")
        # :authority is the upstream's host; no pseudo-header field travels as a field.
        self.assertEqual(header_values(seen, "host"), ["svc.test:8080"])
        self.assertEqual([n for n, _ in seen["headers"] if n.startswith(":")], [], seen["headers"])
        self.assertEqual(", ".join(header_values(seen, "x-forwarded-for")), "203.0.113.9, 127.0.0.1")
        self.assertEqual(header_values(seen, "x-forwarded-proto"), ["http"])
        self.assertEqual(header_values(seen, "x-request-id"), ["abc-123"])
        self.assertEqual(header_values(seen, "cookie"), ["a=1; b=2"], "HTTP/2 cookie crumbs are joined")
        # The upstream's own record of it.
        rec = self.up.requests()[-1]
        self.assertEqual((rec["method"], rec["target"], rec["version"]), ("GET", "/hello/h2?x=1", "HTTP/1.1"))

    def test_authority_becomes_host_and_request_id_is_added(self):
        c = self.h2()
        ids = []
        for i in range(2):
            s = c.get("/rid/%d" % i, authority="Example.Test:8443")
            self.assertEqual(s.status, 200, s)
            seen = s.json()
            self.assertEqual(header_values(seen, "host"), ["Example.Test:8443"])
            self.assertEqual(", ".join(header_values(seen, "x-forwarded-for")), "127.0.0.1")
            v = header_values(seen, "x-request-id")
            self.assertEqual(len(v), 1, seen["headers"])
            ids.append(v[0])
        self.assertNotEqual(ids[0], ids[1], "request ids should be unique")
        # Response fields come in lower case, without connection-specific ones.
        s = c.get("/respheaders")
        self.assertEqual(s.status, 200, s)
        names = [n for n, _ in s.headers]
        self.assertIn("x-kept", names)
        for gone in ("connection", "keep-alive", "x-resp-drop", "transfer-encoding"):
            self.assertNotIn(gone, names, s.headers)
        self.assertEqual(bytes(s.body), b"respheaders\n")

    def test_post_with_content_length_arrives_intact(self):
        body = up.pattern_block()[:300000]  # more than the 256 KiB stream window
        path = os.path.join(self.dir, "body.bin")
        with open(path, "wb") as f:
            f.write(body)
        version, status, out = self.curl("-X", "POST", "--data-binary", "@" + path,
                                         "-H", "Content-Type: application/octet-stream", path="/upload/cl")
        self.assertEqual((version, status), ("2", 200), out[:300])
        seen = json.loads(out)
        self.assertEqual(seen["body_len"], len(body))
        self.assertEqual(seen["body_crc"], zlib.crc32(body))
        self.assertFalse(seen["chunked"])
        self.assertEqual(header_values(seen, "content-length"), [str(len(body))])
        rec = [r for r in self.up.requests() if r["target"] == "/upload/cl"]
        self.assertEqual(len(rec), 1)
        self.assertEqual((rec[0]["body_len"], rec[0]["body_crc"], rec[0]["complete"]),
                         (len(body), zlib.crc32(body), True))

    def test_post_without_content_length_goes_upstream_chunked(self):
        body = bytes(range(256)) * 300  # 76800 bytes, several DATA frames
        version, status, out = self.curl("-X", "POST", "--data-binary", "@-", "-H", "Content-Length:",
                                         path="/upload/streamed", stdin=body)
        self.assertEqual((version, status), ("2", 200), out[:300])
        seen = json.loads(out)
        self.assertTrue(seen["chunked"], "no content-length: the upstream should get a chunked body")
        self.assertEqual(header_values(seen, "content-length"), [])
        self.assertEqual((seen["body_len"], seen["body_crc"]), (len(body), zlib.crc32(body)))
        # The h2 library, in DATA frames of uneven sizes.
        c = self.h2()
        sid = c.request("POST", "/upload/frames", end_stream=False)
        pieces = [b"a" * 1, b"b" * 1000, b"c" * 16384, b"d" * 7]
        for p in pieces:
            c.conn.send_data(sid, p)
        c.conn.end_stream(sid)
        c.flush()
        s = c.response(sid)
        self.assertEqual(s.status, 200, s)
        whole = b"".join(pieces)
        self.assertEqual((s.json()["body_len"], s.json()["body_crc"], s.json()["chunked"]),
                         (len(whole), zlib.crc32(whole), True))


class ResponsesTest(H2Test):
    def test_head_204_304_have_no_body(self):
        c = self.h2()
        g = c.get("/download?bytes=1234")
        self.assertEqual((g.status, len(g.body)), (200, 1234), g)
        r = c.response(c.request("HEAD", "/download?bytes=1234"))
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.ended, r)
        self.assertEqual(bytes(r.body), b"")
        self.assertEqual(r.header("content-length"), "1234", "HEAD keeps the Content-Length a GET would have")
        for code in (204, 304):
            r = c.get("/status/%d" % code)
            self.assertEqual(r.status, code, r)
            self.assertTrue(r.ended, r)
            self.assertEqual(bytes(r.body), b"", r)
            self.assertEqual(r.header("x-status"), str(code))
        self.assertEqual(c.get("/after-bodiless").json()["target"], "/after-bodiless")

    def test_large_response_arrives_whole(self):
        n = 3 * 1024 * 1024 + 5  # far past the client's 64 KiB windows: flow control both ways
        block = up.pattern_block()
        expected = (block * (n // len(block) + 1))[:n]
        c = self.h2(timeout=20)
        s = c.get("/download?bytes=%d" % n, timeout=20)
        self.assertEqual(s.status, 200, s.headers)
        self.assertEqual(len(s.body), n)
        self.assertEqual(zlib.crc32(bytes(s.body)), zlib.crc32(expected))
        version, status, body = self.curl(path="/download?bytes=%d" % n)
        self.assertEqual((version, status, len(body)), ("2", 200, n))
        self.assertEqual(zlib.crc32(body), zlib.crc32(expected))

    def test_upstream_failing_mid_response_resets_the_stream(self):
        # Part of the response went to the client, then the upstream failed: reset after 10 of
        # 1000 body bytes, or an invalid chunk after the first. The client must get a reset
        # stream (on HTTP/1.1, pilotfish closes the connection), not END_STREAM, and not a
        # stream left open. Each on its own connection, where nothing else happens.
        cases = [("reset-after-head", "/fault/reset-after-head"), ("bad-chunk", "/invalid?kind=bad_chunk")]
        conns = [(label, self.h2(), path) for label, path in cases]
        sids = [c.request("GET", path) for _, c, path in conns]
        outcome = {}
        deadline = time.monotonic() + 4
        for (label, c, path), sid in zip(conns, sids):
            try:
                c.wait(lambda: c.done(sid) or c.closed, max(0.0, deadline - time.monotonic()),
                       "the end of stream %d (%s)" % (sid, label))
            except AssertionError:
                pass
            outcome[label] = c.streams[sid]
        for label, _ in cases:
            s = outcome[label]
            # Its head may or may not have gone before the reset (the bad chunk comes in the
            # same read as the head).
            self.assertIn(s.status, (200, None), "%s: %r" % (label, s))
            self.assertFalse(s.ended, "%s: a broken response ended as if whole: %r" % (label, s))
            self.assertIsNotNone(s.reset, "%s: the stream was neither reset nor ended 4s after the upstream "
                                 "failed: %r" % (label, outcome))
        self.assertEqual(outcome["reset-after-head"].body, b"0123456789")
        for _, c, _ in conns:
            self.assertEqual(c.get("/after-break").status, 200)

    def test_expect_100_continue(self):
        c = self.h2()
        sid = c.request("POST", "/expect", headers=[("expect", "100-continue"), ("content-length", "5")],
                        end_stream=False)
        c.wait(lambda: c.streams[sid].interim or c.done(sid), 5, "100 Continue")
        self.assertEqual([dict(i).get(":status") for i in c.streams[sid].interim], ["100"], c.streams[sid])
        c.conn.send_data(sid, b"hello", end_stream=True)
        c.flush()
        s = c.response(sid)
        self.assertEqual(s.status, 200, s)
        self.assertEqual(s.json()["body"], "hello")
        self.assertTrue(s.json()["sent_100"])

    def test_sigterm_drains_with_goaway_and_in_flight_streams_finish(self):
        # nghttp, as the h2 library treats any frame after a GOAWAY as a protocol error.
        out_path = os.path.join(self.dir, "nghttp.out")
        with open(out_path, "wb") as out:
            p = h.spawn(["nghttp", "-v", "-t", "10", "http://127.0.0.1:%d/slow?ms=800&drain=1" % self.port],
                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(h.kill_proc, p)
        h.wait_for(lambda: len(self.up.requests()) >= 1, 5, what="the slow request at the upstream")
        self.pf.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(15), 0)
        with open(out_path, "rb") as f:
            text = f.read().decode(errors="replace")
        m = re.search(r"recv GOAWAY frame .*\n\s*\(last_stream_id=(\d+), error_code=(\w+)", text)
        self.assertTrue(m, text)
        self.assertEqual(m.group(2), "NO_ERROR", text)
        self.assertIn("recv (stream_id=%s) :status: 200" % m.group(1), text,
                      "the stream in flight (GOAWAY's last_stream_id) finished")
        self.assertIn('"target": "/slow?ms=800&drain=1"', text)
        self.assertLess(text.index("recv GOAWAY"), text.index(":status: 200"), "GOAWAY came first")
        self.pf.proc.wait(15)
        self.assertEqual(self.pf.proc.returncode, 0, self.pf.log())


# -- 2 -----------------------------------------------------------------------------------------
class ConcurrencyTest(H2Test):
    def test_h2load_200_requests_20_streams_on_one_connection(self):
        conns = self.connections_total()
        ok = self.requests_total()
        rc, out, err = run(["h2load", "-n", "200", "-c", "1", "-m", "20",
                            "http://127.0.0.1:%d/load" % self.port], timeout=30)
        text = out.decode(errors="replace")
        self.assertEqual(rc, 0, text + err)
        self.assertRegex(text, r"requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed, 0 errored",
                         text)
        self.assertRegex(text, r"status codes: 200 2xx", text)
        self.assertIn("Application protocol: h2c", text)
        self.assertEqual(self.connections_total() - conns, 1, "h2load -c 1: one client connection")
        self.assertEqual(self.requests_total() - ok, 200)
        self.assertEqual(self.upstream_targets().count("/load"), 200)
        lines = h.wait_for(lambda: len(self.access_lines()) >= 200 and self.access_lines(), 5,
                           what="200 access-log lines")
        self.assertEqual(sum(1 for l in lines if l["path"] == "/load" and l["status"] == 200), 200)

    def test_concurrent_streams_each_get_their_own_response(self):
        c = self.h2().handshake()
        sids = {}
        for i in range(30):
            # Slow ones first, so that the answers come back out of order.
            path = "/slow?ms=%d&i=%d" % (300 if i < 10 else 0, i) if i % 3 == 0 else "/fast/%d" % i
            sids[c.request("GET", path)] = path
        c.wait(lambda: all(c.done(s) for s in sids), 15, "30 streams")
        for s, path in sids.items():
            r = c.streams[s]
            self.assertEqual(r.status, 200, r)
            self.assertTrue(r.ended, r)
            self.assertEqual(r.json()["target"], path, "stream %d got another stream's response" % s)
        self.assertEqual(sorted(self.upstream_targets()), sorted(sids.values()))
        self.assertFalse(c.closed)
        self.assertIsNone(c.goaway)


# -- 3 -----------------------------------------------------------------------------------------
class LocalAnswersTest(H2Test):
    def assert_local(self, s, status, token):
        self.assertEqual(s.status, status, s)
        self.assertTrue(s.ended, s)
        self.assertEqual(s.header("x-pilotfish-error"), token, s)
        self.assertEqual((s.header("content-type") or "").split(";")[0], "text/plain", s)
        self.assertEqual(bytes(s.body), b"%d %s\n" % (status, token.encode()), s)

    def test_no_route_404(self):
        c = self.h2("limited")
        self.assert_local(c.get("/nothing/here"), 404, "no_route")
        version, status, body = self.curl(listener="limited", path="/elsewhere")
        self.assertEqual((version, status, body), ("2", 404, b"404 no_route\n"))
        self.assertEqual(c.get("/ok/after").status, 200)
        self.assertEqual(self.upstream_targets(), ["/ok/after"])
        h.wait_for(lambda: len(self.access_lines()) >= 3, 5, what="3 access-log lines")
        self.assertEqual([(l["listener"], l["path"], l["status"], l["error"]) for l in self.access_lines()][:2],
                         [("limited", "/nothing/here", 404, "no_route"), ("limited", "/elsewhere", 404, "no_route")])

    def test_header_block_over_max_header_bytes_431(self):
        c = self.h2("limited")
        s = c.get("/ok/big", headers=[("x-big", "v" * 3000)])
        self.assert_local(s, 431, "header_too_large")
        # Many small fields add up too.
        s = c.get("/ok/many", headers=[("x-f%d" % i, "v" * 40) for i in range(60)])
        self.assert_local(s, 431, "header_too_large")
        # The HPACK state is intact: the next stream decodes.
        s = c.get("/ok/small", headers=[("x-small", "v" * 100)])
        self.assertEqual(s.status, 200, s)
        self.assertEqual(header_values(s.json(), "x-small"), ["v" * 100])
        self.assertEqual(self.upstream_targets(), ["/ok/small"])

    def finish(self, c, sid):
        """The client's side of a stream answered before its request was sent whole: a client
        that has its final response cancels the rest (RST_STREAM CANCEL)."""
        if not c.closed and c.conn.streams.get(sid) is not None and not c.conn.streams[sid].closed:
            c.conn.reset_stream(sid, CANCEL)
            c.flush()

    def test_body_over_max_body_bytes_413(self):
        c = self.h2("limited")
        body = b"x" * 5000
        sid = c.request("POST", "/ok/big-body", headers=[("content-length", str(len(body)))], end_stream=False)
        s = c.response(sid)  # answered on the head, before the body is sent
        self.assert_local(s, 413, "body_too_large")
        self.finish(c, sid)
        # Without content-length: counted as it streams.
        sid = c.request("POST", "/ok/streamed-body", end_stream=False)
        for _ in range(5):
            if c.done(sid):
                break
            c.conn.send_data(sid, b"y" * 1000)
            c.flush()
            c.pump(time.monotonic() + 0.05)
        if not c.done(sid):
            c.conn.end_stream(sid)
            c.flush()
        s = c.response(sid)
        self.assert_local(s, 413, "body_too_large")
        self.finish(c, sid)
        self.assertNotIn("/ok/big-body", self.upstream_targets())
        s = c.get("/ok/after-413")
        self.assertEqual(s.status, 200, s)
        body = b"z" * 1000  # at the limit
        s = c.response(c.request("POST", "/ok/at-limit", headers=[("content-length", "1000")], body=body))
        self.assertEqual(s.status, 200, s)
        self.assertEqual(s.json()["body_len"], 1000)

    def test_connect_405(self):
        c = self.h2(strict=False)
        s = c.response(c.send_raw_headers(c.conn.get_next_available_stream_id(),
                                          [(":method", "CONNECT"), (":authority", "db.test:5432")]))
        self.assert_local(s, 405, "connect_refused")
        self.assertEqual(self.upstream_targets(), [])
        self.assertEqual(c.get("/after-connect").status, 200)

    def test_invalid_host_400(self):
        c = self.h2(strict=False)
        raw = c.conn.get_next_available_stream_id
        # An authority nghttp2 lets through (userinfo) that pilotfish refuses as a host.
        s = c.response(c.send_raw_headers(raw(), [(":method", "GET"), (":scheme", "http"),
                                                  (":authority", "user@test.local"), (":path", "/userinfo")]))
        self.assert_local(s, 400, "invalid_host")
        # Neither :authority nor host: 400 invalid_host, or refused as malformed by the codec
        # (RFC 9113 8.3.1 requires one of them); never forwarded.
        s = c.response(c.send_raw_headers(raw(), [(":method", "GET"), (":scheme", "http"), (":path", "/hostless")]))
        if s.reset is None:
            self.assert_local(s, 400, "invalid_host")
        else:
            self.assertEqual((s.reset, s.status), (PROTOCOL_ERROR, None), s)
        # A host field alone will do.
        s = c.response(c.send_raw_headers(raw(), [(":method", "GET"), (":scheme", "http"), (":path", "/host-field"),
                                                  ("host", "only-host.test")]))
        self.assertEqual(s.status, 200, s)
        self.assertEqual(header_values(s.json(), "host"), ["only-host.test"])
        self.assertEqual(self.upstream_targets(), ["/host-field"])

    def test_upstream_unreachable_503(self):
        c = self.h2("limited")
        s = c.get("/dead/x", timeout=10)
        self.assertEqual(s.status, 503, s)
        token = s.header("x-pilotfish-error")
        self.assertTrue(token, s)
        self.assert_local(s, 503, token)
        self.assertEqual(c.get("/ok/after-503").status, 200)

    def test_answered_stream_whose_body_never_comes_is_closed(self):
        # An answer before the request is whole (413 on the head; 408 when the body stops
        # coming) leaves the client's half of the stream open. pilotfish must not keep it so
        # for ever: on HTTP/1.1 it closes the connection; on HTTP/2 it should reset the stream
        # (RST_STREAM NO_ERROR, RFC 9113 8.1) or, at the latest, end it with body_timeout or
        # idle_timeout (both 1s on this listener). Otherwise the stream holds a slot of
        # max_concurrent_streams, the connection never idles out, and a drain waits for it
        # until drain_timeout.
        big = self.h2("brief", timeout=8)
        sid_big = big.request("POST", "/big", headers=[("content-length", "5000")], end_stream=False)
        slow = self.h2("brief", timeout=8)
        sid_slow = slow.request("POST", "/trickle", headers=[("content-length", "10")], end_stream=False)
        slow.conn.send_data(sid_slow, b"abc")
        slow.flush()
        self.assert_local(big.response(sid_big), 413, "body_too_large")
        self.assert_local(slow.response(sid_slow, 5), 408, "body_timeout")

        def server_closed(c, sid):
            return c.streams[sid].reset is not None or c.goaway is not None or c.closed
        outcome = {}
        deadline = time.monotonic() + 4
        for label, c, sid in (("413", big, sid_big), ("408", slow, sid_slow)):
            try:
                c.wait(lambda: server_closed(c, sid), max(0.0, deadline - time.monotonic()),
                       "the server to close the answered stream")
                outcome[label] = (c.streams[sid].reset, c.goaway, c.closed)
            except AssertionError:
                outcome[label] = None
            c.close()  # not left for the drain at tearDown
        self.assertEqual([r["target"] for r in self.up.requests() if r["complete"]], [])
        for label in ("413", "408"):
            self.assertIsNotNone(outcome[label], "%s: the answered stream is still open, 4s after its answer, "
                                 "with idle_timeout and body_timeout 1s: %s" % (label, outcome))

# -- 4 -----------------------------------------------------------------------------------------
class MalformedTest(H2Test):
    BASE = [(":method", "GET"), (":scheme", "http"), (":authority", "test.local")]
    CASES = [
        ("connection", [("connection", "keep-alive")]),
        ("keep-alive", [("keep-alive", "timeout=5")]),
        ("proxy-connection", [("proxy-connection", "keep-alive")]),
        ("transfer-encoding", [("transfer-encoding", "chunked")]),
        ("upgrade", [("upgrade", "websocket")]),
        ("uppercase", [("X-Upper", "1")]),
        ("te-gzip", [("te", "gzip")]),
        ("host-mismatch", [("host", "other.test")]),
        ("two-hosts", [("host", "test.local"), ("host", "other.test")]),
        ("crlf-value", [("x-smuggle", "a\r\nx-injected: 1")]),
        ("colon-in-name", [("x:bad", "1")]),
    ]

    def test_malformed_fields_get_rst_stream_protocol_error(self):
        c = self.h2(strict=False).handshake()
        for label, extra in self.CASES:
            with self.subTest(case=label):
                path = "/malformed/" + label
                sid = c.send_raw_headers(c.conn.get_next_available_stream_id(),
                                         self.BASE + [(":path", path)] + extra)
                s = c.response(sid)
                self.assertEqual(s.reset, PROTOCOL_ERROR, "%s: %r" % (label, s))
                self.assertIsNone(s.status, "%s: a malformed request got a response: %r" % (label, s))
                # The connection goes on: an honest stream on it gets 200.
                ok = c.get("/honest/" + label)
                self.assertEqual(ok.status, 200, "%s: %r" % (label, ok))
        self.assertFalse(c.closed)
        self.assertIsNone(c.goaway)
        targets = self.upstream_targets()
        self.assertEqual([t for t in targets if t.startswith("/malformed/")], [], targets)
        self.assertEqual(len(targets), len(self.CASES))
        self.assertTrue(self.pf.alive())

    def test_malformed_pseudo_headers_get_rst_stream_protocol_error(self):
        cases = [
            ("dup-path", [(":method", "GET"), (":scheme", "http"), (":authority", "test.local"),
                          (":path", "/malformed/dup-path"), (":path", "/other")]),
            ("dup-method", [(":method", "GET"), (":method", "POST"), (":scheme", "http"),
                            (":authority", "test.local"), (":path", "/malformed/dup-method")]),
            ("no-path", [(":method", "GET"), (":scheme", "http"), (":authority", "test.local")]),
            ("pseudo-after-field", [(":method", "GET"), (":scheme", "http"), ("x-a", "1"),
                                    (":authority", "test.local"), (":path", "/malformed/late")]),
            ("unknown-pseudo", [(":method", "GET"), (":scheme", "http"), (":authority", "test.local"),
                                (":path", "/malformed/unknown"), (":protocol", "websocket")]),
            ("response-pseudo", [(":method", "GET"), (":scheme", "http"), (":authority", "test.local"),
                                 (":path", "/malformed/status"), (":status", "200")]),
        ]
        c = self.h2(strict=False).handshake()
        for label, fields in cases:
            with self.subTest(case=label):
                s = c.response(c.send_raw_headers(c.conn.get_next_available_stream_id(), fields))
                self.assertEqual(s.reset, PROTOCOL_ERROR, "%s: %r" % (label, s))
                self.assertIsNone(s.status, "%s: %r" % (label, s))
                self.assertEqual(c.get("/honest/" + label).status, 200, label)
        targets = self.upstream_targets()
        self.assertEqual([t for t in targets if not t.startswith("/honest/")], [], targets)

    def test_content_length_disagreeing_with_data_is_refused(self):
        c = self.h2(strict=False).handshake()
        sid = c.request("POST", "/malformed/cl-more", headers=[("content-length", "10")], body=b"x" * 20)
        s = c.response(sid)
        self.assertEqual((s.reset, s.status), (PROTOCOL_ERROR, None), s)
        sid = c.request("POST", "/malformed/cl-less", headers=[("content-length", "10")], body=b"x" * 3)
        s = c.response(sid)
        self.assertEqual(s.reset, PROTOCOL_ERROR, s)
        self.assertEqual(c.get("/honest/after-cl").status, 200)
        # Whatever reached the upstream of these two (the head goes before the body is known
        # to be short) never completed as a request.
        for r in self.up.requests():
            if r["target"].startswith("/malformed/"):
                self.assertFalse(r["complete"], r)
                self.assertLess(r["body_len"], 10, r)


# -- 5 -----------------------------------------------------------------------------------------
class DisabledTest(H2Test):
    def test_http2_false_does_not_speak_http2(self):
        port = self.pf.port("noh2")
        with h.Client(port) as c:
            # The preface and an empty SETTINGS frame, as a prior-knowledge client sends them.
            c.send(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            data, closed = c.read_until_close(5)
        self.assertTrue(closed, "the connection should be closed: %r" % data[:200])
        # Refused as HTTP/1.1 (no HTTP/2 SETTINGS frame back).
        self.assertTrue(data == b"" or data.startswith(b"HTTP/1.1 400 "), data[:300])
        rc, out, err = run(["curl", "-sS", "--http2-prior-knowledge", "-o", os.devnull, "-w", "%{http_version}",
                            "http://127.0.0.1:%d/pk" % port])
        self.assertNotEqual(out.decode().strip(), "2", "curl got HTTP/2 from an http2: false listener")
        # HTTP/1.1 on the same listener.
        r = h.request(port, "GET", "/h1-ok")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.upstream_targets(), ["/h1-ok"])

    def test_http11_still_served_where_http2_is_on(self):
        with h.Client(self.port) as c:
            for i in range(3):
                r = c.request("GET", "/h1/%d" % i)
                self.assertEqual(r.status, 200, r)
            # A request line that starts like the preface but is not.
            c.send(b"PRI /x HTTP/1.1\r\nHost: t\r\n\r\n")
            r = c.read_response()
            self.assertNotEqual(r.status, 200, r)
        self.assertEqual(self.upstream_targets(), ["/h1/0", "/h1/1", "/h1/2"])


class CheckTest(unittest.TestCase):
    def check(self, http2_yaml):
        d = h.make_tmpdir("pf-h2check-")
        path = os.path.join(d, "policy.yaml")
        with open(path, "w") as f:
            f.write("version: 1\nlisteners:\n  - name: in\n    address: 127.0.0.1:0\n"
                    "    http2: %s\n    routes:\n      - cluster: app\n"
                    "clusters:\n  - name: app\n    endpoints: [127.0.0.1:9]\n" % http2_yaml)
        rc, out, err = h.run_cli(["check", "--config", path])
        return rc, out + err, path

    def test_check_accepts_and_refuses(self):
        for good in ("{max_concurrent_streams: 10}", "false", "true", "{}", "{max_concurrent_streams: 10000}"):
            with self.subTest(http2=good):
                rc, out, _ = self.check(good)
                self.assertEqual(rc, 0, out)
        for bad, words in (("{max_concurrent_streams: 0}", "http2.max_concurrent_streams: 0 is out of range"),
                           ("{max_concurrent_streams: 10001}", "http2.max_concurrent_streams: 10001 is out of range"),
                           ("{max_concurrent_streams: many}", "http2.max_concurrent_streams: expected an integer"),
                           ("{max_streams: 10}", "http2.max_streams: unknown key"),
                           ("maybe", "http2: expected true or false")):
            with self.subTest(http2=bad):
                rc, out, path = self.check(bad)
                self.assertEqual(rc, 1, out)
                # FILE:LINE:COL: a message naming the key (line 5: `http2:`).
                self.assertRegex(out, r"(?m)^%s:5:\d+: .*%s" % (re.escape(path), re.escape(words)), out)


# -- 6 -----------------------------------------------------------------------------------------
class MaxConcurrentStreamsTest(H2Test):
    def test_settings_advertise_the_limits(self):
        c = self.h2("narrow").handshake()
        self.assertEqual(c.conn.remote_settings.max_concurrent_streams, 2)
        d = self.h2("ingress").handshake()
        self.assertEqual(d.conn.remote_settings.max_concurrent_streams, 100)
        lim = self.h2("limited").handshake()
        self.assertEqual(lim.conn.remote_settings.max_header_list_size, 2048)

    def test_streams_over_the_limit_are_refused(self):
        c = self.h2("narrow", timeout=10).handshake()
        first = [c.request("GET", "/slow?ms=600&n=%d" % i) for i in range(2)]
        h.wait_for(lambda: len(self.up.requests()) >= 2, 5, what="the 2 slow requests at the upstream")
        # Past the limit the server announced: the h2 library would refuse to send them, so it is
        # told the limit is higher.
        c.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 1000
        c.conn.remote_settings.acknowledge()
        extra = [c.request("GET", "/extra/%d" % i) for i in range(3)]
        c.wait(lambda: all(c.done(s) for s in first + extra) or c.closed, 10, "5 streams")
        picture = "streams %r, GOAWAY %r (%r), closed %r" % (c.streams, c.goaway, c.goaway_data, c.closed)
        # RFC 9113 5.1.2 asks for a stream error; nghttp2 (the codec's library) makes it a
        # connection error once the client has acknowledged the limit: GOAWAY PROTOCOL_ERROR,
        # which h2spec accepts too. Either way nothing past the limit reaches the upstream.
        if c.goaway is not None:
            self.assertEqual(c.goaway[0], PROTOCOL_ERROR, picture)
            self.assertIn(b"max concurrent streams", c.goaway_data or b"", picture)
        else:
            for s in first:
                self.assertEqual(c.streams[s].status, 200, "a stream within the limit: " + picture)
            for s in extra:
                self.assertIn(c.streams[s].reset, (REFUSED_STREAM, PROTOCOL_ERROR), picture)
                self.assertIsNone(c.streams[s].status, picture)
        self.assertEqual([t for t in self.upstream_targets() if t.startswith("/extra/")], [])
        # Another client of the listener is served meanwhile and after.
        other = self.h2("narrow", timeout=10).handshake()
        self.assertEqual(other.get("/after-limit").status, 200)


class GrpcLocalAnswersTest(H2Test):
    """A real gRPC client (python3-grpcio) gets pilotfish's own answers as gRPC statuses:
    trailers-only, grpc-status, grpc-message with the error token."""

    def call(self, listener, path, metadata=()):
        import grpc  # Debian's python3-grpcio
        channel = grpc.insecure_channel("127.0.0.1:%d" % self.pf.port(listener),
                                        options=[("grpc.enable_http_proxy", 0)])
        self.addCleanup(channel.close)
        method = channel.unary_unary(path)  # raw bytes both ways: no generated code needed
        with self.assertRaises(grpc.RpcError) as caught:
            method(b"\x00\x00\x00\x00\x00", timeout=10, metadata=metadata)
        return caught.exception

    def test_statuses(self):
        import grpc
        # A cluster with nothing listening: every connect fails -> UNAVAILABLE.
        e = self.call("limited", "/dead.Service/Call")
        self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e)
        self.assertIn(e.details(), ("connect_failure", "no_healthy_upstream"))
        # No route -> UNIMPLEMENTED, told by its token.
        e = self.call("limited", "/elsewhere.Service/Call")
        self.assertEqual(e.code(), grpc.StatusCode.UNIMPLEMENTED, e)
        self.assertEqual(e.details(), "no_route")
        trailers = dict(e.trailing_metadata() or ())
        self.assertEqual(trailers.get("x-pilotfish-error"), "no_route")
        # A header block over max_header_bytes -> INTERNAL (431 header_too_large).
        e = self.call("limited", "/ok.Service/Call", metadata=[("x-big", "b" * 3000)])
        self.assertEqual(e.code(), grpc.StatusCode.INTERNAL, e)
        self.assertEqual(e.details(), "header_too_large")
        # The access log keeps the HTTP status pilotfish chose.
        h.wait_for(lambda: ("/elsewhere.Service/Call", 404, "no_route") in
                   [(l["path"], l["status"], l["error"]) for l in self.access_lines()], 5,
                   what="the access-log line of the no_route call, with its HTTP status")
        self.assertEqual(self.up.requests(), [], "nothing reached the app")


# -- 7 -----------------------------------------------------------------------------------------
class AlpnTest(unittest.TestCase):
    """An mtls listener with HTTP/2 (ALPN h2 and http/1.1) and one with http2: false."""

    @classmethod
    def setUpClass(cls):
        cls.dir = h.make_tmpdir("pf-h2tls-")
        pki = h.Pki(os.path.join(cls.dir, "pki"))
        cls.ca = pki.cert
        cls.server = pki.leaf("server", uris=[sid("server")])
        cls.client = pki.leaf("client", uris=[sid("client")])

    def setUp(self):
        self.sockets = []
        self.up = h.Upstream("echo", name="app")
        self.addCleanup(self.up.stop)
        route = [{"cluster": "app"}]
        policy = {
            "version": 1, "service": "server", "workers": 1, "access_log": "off",
            "admin": {"address": "127.0.0.1:0"},
            "identity": {"cert": self.server[0], "key": self.server[1], "ca": self.ca},
            "listeners": [
                {"name": "secure", "address": "127.0.0.1:0", "mtls": True, "routes": route},
                {"name": "secure_h1", "address": "127.0.0.1:0", "mtls": True, "http2": False, "routes": route},
            ],
            "clusters": [{"name": "app", "endpoints": [self.up.address]}],
        }
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.pf.kill)

    def tearDown(self):
        for s in self.sockets:  # the clients go first, as in H2Test
            s.close()
        self.pf.stop_and_check(self)

    def tls(self, listener, alpn):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(self.ca)
        ctx.load_cert_chain(*self.client)
        ctx.set_alpn_protocols(list(alpn))
        raw = socket.create_connection(("127.0.0.1", self.pf.port(listener)), timeout=5)
        s = ctx.wrap_socket(raw, server_hostname="server.test")
        self.sockets.append(s)
        self.addCleanup(s.close)
        return s

    def test_alpn_h2_is_served_over_http2(self):
        s = self.tls("secure", ("h2", "http/1.1"))
        self.assertEqual(s.selected_alpn_protocol(), "h2")
        c = H2Client(sock=s)
        r = c.get("/over-tls", authority="server.test",
                  headers=[("x-forwarded-client-cert", "By=spiffe://evil;URI=spiffe://evil/x"),
                           ("x-forwarded-proto", "http")])
        self.assertEqual(r.status, 200, r)
        seen = r.json()
        self.assertEqual(seen["version"], "HTTP/1.1")
        self.assertEqual(header_values(seen, "x-forwarded-proto"), ["https"])
        # pilotfish's XFCC for the verified peer; the client's own never reaches the app.
        xfcc = header_values(seen, "x-forwarded-client-cert")
        self.assertEqual(len(xfcc), 1, seen["headers"])
        self.assertTrue(xfcc[0].startswith("By=%s;URI=%s;Hash=" % (sid("server"), sid("client"))), xfcc)
        self.assertEqual(header_values(seen, "host"), ["server.test"])
        # Several streams on the TLS connection.
        sids = [c.request("GET", "/tls/%d" % i, authority="server.test") for i in range(5)]
        c.wait(lambda: all(c.done(x) for x in sids), 10, "5 streams over TLS")
        self.assertEqual([c.streams[x].json()["target"] for x in sids], ["/tls/%d" % i for i in range(5)])

    def test_curl_http2_over_mtls(self):
        rc, out, err = run(["curl", "-sS", "--http2", "--insecure", "--cert", self.client[0], "--key", self.client[1],
                            "-o", os.devnull, "-w", "%{http_version} %{response_code}",
                            "https://127.0.0.1:%d/curl-tls" % self.pf.port("secure")])
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.decode().split(), ["2", "200"])
        self.assertIn("/curl-tls", [r["target"] for r in self.up.requests()])

    def test_alpn_http11_only_gets_http11(self):
        s = self.tls("secure", ("http/1.1",))
        self.assertEqual(s.selected_alpn_protocol(), "http/1.1")
        s.sendall(h.build_request("GET", "/h1-over-tls"))
        data = b""
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:200])

    def test_http2_false_mtls_listener_picks_http11(self):
        s = self.tls("secure_h1", ("h2", "http/1.1"))
        self.assertEqual(s.selected_alpn_protocol(), "http/1.1")


# -- 8 -----------------------------------------------------------------------------------------
class TrailersTest(H2Test):
    def test_response_trailers_arrive_as_http2_trailers(self):
        c = self.h2()
        s = c.get("/chunked?n=3&size=5")
        self.assertEqual(s.status, 200, s)
        self.assertTrue(s.ended, s)
        self.assertEqual(bytes(s.body), b"".join(up.chunked_body(3, 5)))
        self.assertEqual(s.header("x-chunked"), "yes")
        self.assertIsNone(s.header("transfer-encoding"), s.headers)
        # x-trailer travels; content-length and set-cookie never go in trailers.
        self.assertEqual(s.trailers, [("x-trailer", "t")], s)
        self.assertEqual(c.get("/after-trailers").status, 200)

    def test_request_trailers_reach_the_upstream(self):
        c = self.h2()
        sid = c.request("POST", "/req-trailers", end_stream=False)
        c.conn.send_data(sid, b"abc")
        c.conn.send_headers(sid, [("x-checksum", "1"), ("authorization", "Bearer x"),
                                  ("server-timing", "db;dur=5")], end_stream=True)
        c.flush()
        s = c.response(sid)
        self.assertEqual(s.status, 200, s)
        seen = s.json()
        self.assertTrue(seen["chunked"])
        self.assertEqual(seen["body"], "abc")
        self.assertEqual(seen["trailers"], [["x-checksum", "1"], ["server-timing", "db;dur=5"]])


# -- 9 -----------------------------------------------------------------------------------------
class RapidResetTest(H2Test):
    def test_rapid_reset_ends_that_connection_only(self):
        honest = self.h2().handshake()
        h1 = h.Client(self.port)
        self.clients.append(h1)
        self.addCleanup(h1.close)
        bad = self.h2(timeout=10).handshake()
        honest_ok = h1_ok = 0
        sent = 0
        try:
            for batch in range(20):  # 20 x 100 = 2000 streams opened and reset at once
                for _ in range(100):
                    sid = bad.conn.get_next_available_stream_id()
                    bad.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                                (":authority", "test.local"), (":path", "/rr/%d" % sid)],
                                          end_stream=True)
                    bad.conn.reset_stream(sid, CANCEL)
                    sent += 1
                bad.flush()
                bad.pump(time.monotonic() + 0.001)
                if batch % 4 == 0:
                    self.assertEqual(honest.get("/honest/%d" % batch).status, 200)
                    honest_ok += 1
                    self.assertEqual(h1.request("GET", "/h1/%d" % batch).status, 200)
                    h1_ok += 1
                if bad.goaway or bad.closed:
                    break
        except (BrokenPipeError, ConnectionResetError, h2.exceptions.ProtocolError):
            bad.closed = True  # written after the server's GOAWAY or close
        bad.wait(lambda: bad.goaway is not None or bad.closed, 10, "GOAWAY or a close after %d resets" % sent)
        self.assertTrue(bad.goaway is not None or bad.closed)
        if bad.goaway:
            self.assertNotEqual(bad.goaway[0], h2.errors.ErrorCodes.NO_ERROR, bad.goaway)
        self.assertLess(bad.goaway[1] if bad.goaway else 0, 2 * sent, "GOAWAY came before every stream was taken")
        # The others went on, and go on.
        self.assertGreaterEqual(honest_ok, 1)
        self.assertEqual(honest.get("/honest/after").status, 200)
        self.assertEqual(h1.request("GET", "/h1/after").status, 200)
        self.assertEqual(self.h2().get("/new/after").status, 200)
        self.assertTrue(self.pf.alive())


class FloodTest(H2Test):
    """Attacks written as raw frames (the h2 library would not send them): each ends the
    attacker's connection (or its stream), while an honest HTTP/2 client is served meanwhile."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    @staticmethod
    def frame(kind, flags, stream, payload=b""):
        return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

    @staticmethod
    def literal(name, value):
        """HPACK literal without indexing, new name; lengths < 127."""
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    def request_block(self, path=b"/flood", method=b"GET"):
        return b"".join(self.literal(n, v) for n, v in [(b":method", method), (b":scheme", b"http"),
                                                         (b":authority", b"test.local"), (b":path", path)])

    def raw(self, listener="ingress", pf=None, rcvbuf=None, settings=b""):
        """A connection that has sent the preface and a SETTINGS frame (`settings`: its payload).
        rcvbuf: SO_RCVBUF, set before connect (so that the window it advertises is that small)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        self.clients.append(sock)  # closed first at tearDown, as the other clients
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", (pf or self.pf).port(listener)))
        sock.sendall(self.PREFACE + self.frame(4, 0, 0, settings))
        return sock

    @staticmethod
    def frames(data):
        """The whole frames in `data`: [(type, flags, stream id, payload)]."""
        out, off = [], 0
        while off + 9 <= len(data):
            length = int.from_bytes(data[off:off + 3], "big")
            if off + 9 + length > len(data):
                break
            out.append((data[off + 3], data[off + 4], int.from_bytes(data[off + 5:off + 9], "big") & 0x7fffffff,
                        data[off + 9:off + 9 + length]))
            off += 9 + length
        return out

    def read_frames(self, sock, until=None, timeout=15, data=b""):
        """Reads until until(frames) holds for the frames the server sent (data: bytes read
        before), the server closes the connection, or timeout: (frames, bytes, closed)."""
        deadline = time.monotonic() + timeout
        sock.settimeout(0.5)
        closed = False
        while not (until and until(self.frames(data))) and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
        return self.frames(data), data, closed

    def ends(self, sock, what):
        """Reads (bounded) until the server closes the connection; the frames it sent."""
        frames, _, closed = self.read_frames(sock)
        if not closed:
            self.fail("%s: the connection was not closed" % what)
        return frames

    @staticmethod
    def goaway_code(frames):
        """The error code of the GOAWAY among frames, or None."""
        codes = [struct.unpack(">II", p[:8])[1] for kind, _, _, p in frames if kind == 7]
        return codes[-1] if codes else None

    @staticmethod
    def settings_of(frames):
        """The parameters of the first SETTINGS frame (not an ACK) among frames, or None."""
        for kind, flags, _, p in frames:
            if kind == 4 and not flags & 1:
                return dict(struct.unpack(">HI", p[i:i + 6]) for i in range(0, len(p) - 5, 6))
        return None

    def honest_served(self, tag, listener="ingress", pf=None, h1=False):
        """An honest HTTP/2 client (and with h1, an HTTP/1.1 one) of the listener gets its 200."""
        self.assertEqual(self.h2(listener, pf=pf).handshake().get("/honest/" + tag).status, 200)
        if h1:
            r = h.request((pf or self.pf).port(listener), "GET", "/honest-h1/" + tag)
            self.assertEqual(r.status, 200, r)

    def sidecar(self, stuck):
        """A pilotfish of this test's own, beside self.pf: listener ingress routes /stuck to the
        cluster `stuck` (connect_timeout 10s), the rest to the echo upstream; an access log.
        Returns (pilotfish, access-log path); the test stops it (its clients closed first)."""
        log = os.path.join(self.dir, "sidecar-access.log")
        policy = h.simple_policy(self.up, access_log=log,
                                 routes=[{"match": {"path_prefix": "/stuck"}, "cluster": "stuck"}, {"cluster": "app"}])
        policy["log_level"] = "debug"
        policy["clusters"].append({"name": "stuck", "endpoints": [stuck.address], "connect_timeout": "10s"})
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        return pf, log

    def test_continuation_flood(self):
        sock = self.raw()
        block = self.request_block()
        frames = [self.frame(1, 0, 1, block[:5])]  # HEADERS without END_HEADERS
        frames += [self.frame(9, 0, 1, b"\x00") for _ in range(2000)]  # CONTINUATION, never ending
        try:
            sock.sendall(b"".join(frames))
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.honest_served("continuation")
        self.ends(sock, "CONTINUATION flood")  # closed (nghttp2 ends it as a fatal error)
        self.assertNotIn("/flood", self.upstream_targets())

    def test_hpack_bomb_is_431_and_the_connection_goes_on(self):
        # A 1000-byte value put in the dynamic table once, then referenced by index 60 times:
        # about 1 KiB on the wire, 60 KB decoded, over the limited listener's max_header_bytes.
        sock = self.raw("limited")
        big = b"b" * 1000
        # A literal with incremental indexing; the value's length in HPACK integer form:
        # 1000 = 127 + 873 -> 0x7f, then 873 in 7-bit groups -> 0xe9 0x06.
        first = self.request_block(b"/ok/bomb") + b"\x40\x05x-big\x7f\xe9\x06" + big
        refs = b"\xbe" * 60  # indexed field 62: the entry just added
        sock.sendall(self.frame(1, 0x5, 1, first + refs))  # END_STREAM | END_HEADERS
        sock.settimeout(5)
        data = b""
        deadline = time.monotonic() + 5
        while b"431" not in data and time.monotonic() < deadline:
            try:
                data += sock.recv(65536)
            except socket.timeout:
                break
        self.assertIn(b"431", data, "no 431 for the bomb")
        # The same connection takes an honest request after it.
        sock.sendall(self.frame(1, 0x5, 3, self.request_block(b"/ok/after")))
        deadline = time.monotonic() + 5
        while b"/ok/after" not in data and time.monotonic() < deadline:
            try:
                data += sock.recv(65536)
            except socket.timeout:
                break
        self.assertIn(b"/ok/after", data, "the request after the bomb was not answered")
        self.assertEqual([t for t in self.upstream_targets() if "bomb" in t], [])

    def test_settings_and_ping_floods_from_a_client_that_does_not_read(self):
        # The brief listener: idle_timeout 1s, after which a client that takes nothing is cut off.
        for kind, payload, name in ((4, b"", "SETTINGS"), (6, b"12345678", "PING")):
            sock = self.raw("brief")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            flood = self.frame(kind, 0, 0, payload) * 20000  # each asks for an ACK it never reads
            try:
                sock.settimeout(10)
                sock.sendall(flood)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                pass
            self.honest_served(name)
            self.ends(sock, name + " flood")
        self.assertTrue(self.pf.alive())

    def test_empty_data_frame_flood(self):
        # A POST whose body is 1000 DATA frames that carry nothing and end nothing, in one burst:
        # pilotfish ends the connection after 32 in a row, GOAWAY ENHANCE_YOUR_CALM.
        sock = self.raw()
        flood = self.frame(1, 0x4, 1, self.request_block(b"/empty-flood", b"POST"))  # END_HEADERS, no END_STREAM
        flood += self.frame(0, 0, 1) * 1000
        try:
            sock.sendall(flood)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.honest_served("empty-data", h1=True)
        frames = self.ends(sock, "empty DATA flood")
        self.assertEqual(self.goaway_code(frames), ENHANCE_YOUR_CALM, frames)
        h.wait_for(lambda: "flood of empty DATA frames" in self.pf.log(200), 5,
                   what="the connection error in pilotfish's log")
        # Whatever reached the upstream of it (the head goes before the body) never completed.
        self.assertEqual([r for r in self.up.requests() if r["target"] == "/empty-flood" and r["complete"]], [])
        # An honest client's empty DATA frames: 60 in all, never more than 20 in a row, between
        # pieces of its body. The limit is on a run of them: it is served, its body intact.
        c = self.h2().handshake()
        sid = c.request("POST", "/empty-ok", end_stream=False)
        pieces = [b"a" * 100, b"b" * 5000, b"c" * 7]
        for piece in pieces:
            for _ in range(20):
                c.conn.send_data(sid, b"")
            c.conn.send_data(sid, piece)
        c.conn.end_stream(sid)
        c.flush()
        s = c.response(sid)
        self.assertEqual(s.status, 200, s)
        whole = b"".join(pieces)
        self.assertEqual((s.json()["body_len"], s.json()["body"]), (len(whole), whole.decode()))
        rec = [r for r in self.up.requests() if r["target"] == "/empty-ok"]
        self.assertEqual([(r["body_len"], r["body_crc"], r["complete"]) for r in rec],
                         [(len(whole), zlib.crc32(whole), True)])
        self.assertEqual(c.get("/after-empty").status, 200)
        self.assertIsNone(c.goaway)
        self.assertTrue(self.pf.alive())

    def test_window_overflows_are_flow_control_errors(self):
        # (a) A WINDOW_UPDATE that takes the connection's window past 2^31-1 (65535 + 0x7fffffff):
        # GOAWAY FLOW_CONTROL_ERROR, and the connection is closed.
        sock = self.raw()
        sock.sendall(self.frame(8, 0, 0, struct.pack(">I", 0x7fffffff)))
        frames = self.ends(sock, "connection window overflow")
        self.assertEqual(self.goaway_code(frames), FLOW_CONTROL_ERROR, frames)
        self.honest_served("connection-window", h1=True)
        # (b) One that takes a stream's window past 2^31-1 (written beside the h2 library, which
        # would refuse to): nghttp2 makes it a stream error, RST_STREAM FLOW_CONTROL_ERROR; the
        # connection and its other stream go on.
        c = self.h2(timeout=10).handshake()
        victim = c.request("GET", "/slow?ms=2000&victim=1")
        other = c.request("GET", "/slow?ms=300&other=1")
        h.wait_for(lambda: "/slow?ms=2000&victim=1" in self.upstream_targets(), 5, what="the victim at the upstream")
        c.sock.sendall(self.frame(8, 0, victim, struct.pack(">I", 0x7fffffff)))
        s = c.response(victim)
        self.assertEqual((s.reset, s.status), (FLOW_CONTROL_ERROR, None), s)
        s = c.response(other)
        self.assertEqual((s.status, s.json()["target"]), (200, "/slow?ms=300&other=1"), s)
        self.assertEqual(c.get("/after-stream-window").status, 200)
        self.assertIsNone(c.goaway)
        self.assertFalse(c.closed)
        # (c) DATA past the stream window pilotfish advertised. pilotfish opens a window again as
        # it passes the body on, so the upstream here is one that never accepts: the body waits
        # in pilotfish (the upstream's connect is under way), and the window is not opened past
        # what pilotfish holds. The client sends three windows and a frame without waiting.
        stuck = h.Upstream("backlog", name="stuck")  # connects to it never complete
        self.addCleanup(stuck.stop)
        side, side_log = self.sidecar(stuck)
        sock = self.raw(pf=side)
        frames, data, closed = self.read_frames(sock, lambda f: self.settings_of(f) is not None, 5)
        self.assertIsNotNone(self.settings_of(frames), "no SETTINGS from pilotfish: %r" % (frames,))
        window = self.settings_of(frames).get(4, 65535)  # SETTINGS_INITIAL_WINDOW_SIZE
        sent = 3 * window + 16384
        body = b"".join(self.frame(0, 0, 1, b"o" * min(16384, sent - i)) for i in range(0, sent, 16384))
        try:
            sock.sendall(self.frame(1, 0x4, 1, self.request_block(b"/stuck/overflow", b"POST")) + body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        def ended(f):
            return any(kind == 3 and stream == 1 for kind, _, stream, _ in f) or self.goaway_code(f) is not None
        frames, data, closed = self.read_frames(sock, ended, 10, data)
        resets = [struct.unpack(">I", p)[0] for kind, _, stream, p in frames if kind == 3 and stream == 1]
        self.assertEqual(resets, [FLOW_CONTROL_ERROR], "window %d, %d bytes sent: %r" % (window, sent, frames))
        self.assertIsNone(self.goaway_code(frames), frames)
        # pilotfish took no more of the body than it allowed: its window and its WINDOW_UPDATEs.
        granted = window + sum(struct.unpack(">I", p)[0] & 0x7fffffff
                               for kind, _, stream, p in frames if kind == 8 and stream == 1)
        line = h.wait_for(lambda: [l for l in self.access_lines(side_log) if l["path"] == "/stuck/overflow"], 5,
                          what="the access-log line of the overflowing stream")
        self.assertLessEqual(line[0]["bytes_in"], granted, line)
        self.assertLess(granted, sent)
        # The same connection takes a request after it, and an honest client is served.
        sock.sendall(self.frame(1, 0x5, 3, self.request_block(b"/after-overflow")))
        def answer(f):
            return b"".join(p for kind, _, stream, p in f if kind == 0 and stream == 3)
        frames, data, closed = self.read_frames(sock, lambda f: b"/after-overflow" in answer(f), 5, data)
        self.assertIn(b"/after-overflow", answer(frames),
                      "the request after the overflow was not answered (closed %r): %r" % (closed, frames))
        self.honest_served("stream-window-data", pf=side, h1=True)
        for client in self.clients:
            client.close()
        side.stop_and_check(self)

    def test_client_that_never_reads_a_large_response(self):
        # A client asks for 50 MB with its windows opened to 1 GiB (flow control holds nothing
        # back), behind a 4 KiB receive buffer, and never reads: pilotfish must stop reading the
        # upstream rather than keep the response in memory.
        n = 50 * 1000 * 1000
        big = 1 << 30
        settings = struct.pack(">HI", 4, big)  # SETTINGS_INITIAL_WINDOW_SIZE: the streams' windows
        opened = self.frame(8, 0, 0, struct.pack(">I", big - 65535))  # the connection's window to 1 GiB

        def attack(listener):
            target = "/download?bytes=%d&stuck=%s" % (n, listener)
            sock = self.raw(listener, rcvbuf=4096, settings=settings)
            sock.sendall(opened + self.frame(1, 0x5, 1, self.request_block(target.encode())))
            h.wait_for(lambda: target in self.upstream_targets(), 5, what="%s at the upstream" % target)
            return sock

        def logged(listener):  # the access log's path leaves the query out
            return [l for l in self.access_lines() if (l["listener"], l["path"]) == (listener, "/download")]

        before = self.pf.rss_kib()
        sock = attack("ingress")
        peak = before
        for i in range(60):  # 3 s, while the response is pending
            peak = max(peak, self.pf.rss_kib())
            time.sleep(0.05)
            if i == 30:
                self.honest_served("never-reads", h1=True)
        self.assertLess(peak - before, 16 * 1024, "pilotfish's VmRSS went from %d to %d KiB with a 50 MB response "
                        "for a client that does not read" % (before, peak))
        # Still pending: had pilotfish taken the whole response from the upstream, the stream
        # would have ended (and been logged).
        self.assertEqual(logged("ingress"), [])
        self.assertTrue(self.pf.alive())
        # On the brief listener (idle_timeout 1s) the stream whose client takes nothing is ended
        # (upstream_stalled) once it has waited for the client that long, well before the
        # cluster's timeout (15s, the default), then the connection, without a stream, is closed
        # after idle_timeout: the client need not read.
        accepted = self.connections_total("brief")
        sock = attack("brief")
        line = h.wait_for(lambda: logged("brief"), 10,
                          what="the access-log line of the stuck stream (before the cluster's 15 s timeout)")
        self.assertEqual((line[0]["status"], line[0]["error"]), (200, "upstream_stalled"), line)
        self.assertEqual(self.connections_total("brief"), accepted + 1)

        def brief_closed():
            v = h.sample(h.metrics(self.pf), "pilotfish_downstream_connections", listener="brief")
            self.assertIsNotNone(v, "no pilotfish_downstream_connections{listener=brief}")
            return int(v) == 0
        h.wait_for(brief_closed, 10, what="pilotfish closing the stuck connection")
        self.ends(sock, "the stuck connection")  # read now: what was queued, then EOF or a reset
        self.honest_served("after-never-reads", h1=True)
        self.assertLess(self.pf.rss_kib() - before, 16 * 1024)


# -- 10 ----------------------------------------------------------------------------------------
class ResetWhileSlowTest(H2Test):
    def upstream_connections(self):
        v = h.sample(h.metrics(self.pf), "pilotfish_upstream_connections", cluster="app")
        self.assertIsNotNone(v, "no pilotfish_upstream_connections{cluster=app}")
        return int(v)

    def test_reset_stream_releases_the_upstream_connection(self):
        c = self.h2().handshake()
        sid = c.request("GET", "/slow?ms=1500&reset=1")
        h.wait_for(lambda: any(r["target"].startswith("/slow?ms=1500") for r in self.up.requests()), 5,
                   what="the slow request at the upstream")
        self.assertEqual(self.upstream_connections(), 1)
        c.conn.reset_stream(sid, CANCEL)
        c.flush()
        # The connection held by the reset stream is closed (its response will never be read).
        h.wait_for(lambda: self.upstream_connections() == 0, 5, what="no upstream connection held")
        # Its access-log line says the client went away.
        line = h.wait_for(lambda: [l for l in self.access_lines() if "reset=1" in l["path"] or l["path"] == "/slow"],
                          5, what="the reset stream's access-log line")
        self.assertEqual(line[0]["error"], "downstream_closed", line)
        # The connection and pilotfish go on.
        self.assertEqual(c.get("/after-reset").status, 200)
        self.assertEqual(self.h2().get("/new-after-reset").status, 200)
        self.assertFalse(c.closed)
        self.assertTrue(self.pf.alive())

    def test_many_resets_while_slow_leave_nothing_stuck(self):
        c = self.h2("ingress", timeout=10).handshake()
        sids = [c.request("GET", "/slow?ms=2000&k=%d" % i) for i in range(10)]
        h.wait_for(lambda: len(self.up.requests()) >= 10, 5, what="10 slow requests at the upstream")
        for s in sids:
            c.conn.reset_stream(s, CANCEL)
        c.flush()
        h.wait_for(lambda: self.upstream_connections() == 0, 5, what="no upstream connection held")
        s = c.get("/after-many")
        self.assertEqual(s.status, 200, s)
        self.assertTrue(self.pf.alive())


if __name__ == "__main__":
    h.main()
