#!/usr/bin/env python3
"""HTTP/2 to upstreams (clusters[].protocol: http2 | auto), with real processes and sockets:

- two sidecars, plain: HTTP/1.1 client -> A (cluster protocol http2) -> B (http listener, h2c)
  -> HTTP/1.1 echo app: bodies with and without length, 1 MiB both ways, HEAD, 204, trailers
  both ways; one upstream connection from A (and one downstream connection at B) for 50
  sequential and 50 concurrent requests;
- the same over mTLS with `auto` (ALPN picks h2: B sees one connection for many concurrent
  clients of A) and with `http2`; `auto` against an mtls listener with `http2: false` falls back
  to HTTP/1.1 (one connection per concurrent request) and works;
- gRPC (python3-grpcio, raw bytes, no generated code) through one sidecar and through two:
  unary, client/server streaming, bidirectional, metadata and trailing metadata, an aborted
  call's status (trailers-only), a client deadline reaching the server;
- a raw HTTP/2 server on the h2 library: GOAWAY after N streams (later and in-flight requests
  still succeed, each processed once), REFUSED_STREAM (a POST is sent again, not counted; at most
  3 times), a stream reset mid-response (the HTTP/1.1 client sees the response cut, the next
  request is served);
- `pilotfish check` of clusters[].protocol.

Run with Debian's interpreter (/usr/bin/python3): it has python3-h2 and python3-grpcio."""

import concurrent.futures
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import unittest
import zlib

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import upstream as up  # noqa: E402

REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
INTERNAL_ERROR = h2.errors.ErrorCodes.INTERNAL_ERROR
MIB = 1024 * 1024


def sid(name):
    return "spiffe://test.local/ns/test/sa/" + name


def header_values(req, name):
    """All values of a header as the echo app received it."""
    return [v for n, v in req["headers"] if n.lower() == name.lower()]


def metric(pf, name, **labels):
    v = h.sample(h.metrics(pf), name, **labels)
    return None if v is None else int(v)


def upstream_connections(pf, cluster="app"):
    v = metric(pf, "pilotfish_upstream_connections", cluster=cluster)
    assert v is not None, "no pilotfish_upstream_connections{cluster=%s}" % cluster
    return v


def downstream_total(pf, listener="ingress"):
    v = metric(pf, "pilotfish_downstream_connections_total", listener=listener)
    assert v is not None, "no pilotfish_downstream_connections_total{listener=%s}" % listener
    return v


def tls_outbound_ok(pf):
    return metric(pf, "pilotfish_tls_handshakes_total", direction="outbound", result="ok")


def tls_inbound_ok(pf):
    return metric(pf, "pilotfish_tls_handshakes_total", direction="inbound", result="ok")


def access_lines(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f.read().splitlines() if l.strip()]
    except FileNotFoundError:
        return []


def stop_all(testcase, pfs):
    """Stops sidecars front to back (A before B), each checked."""
    for pf in pfs:
        if pf.alive():
            pf.stop_and_check(testcase)


# ---------------------------------------------------------------------------------------------
# A raw HTTP/2 server (h2c, prior knowledge) on the h2 library, in threads of the test
# ---------------------------------------------------------------------------------------------

class RawH2Server:
    """Listens on 127.0.0.1:0; every connection is served in its own thread. Modes:
      echo     answer every request: 200, JSON {conn, stream, method, path, body}
      goaway   on each connection, answer the first `n` streams opened (in stream-id order), then
               send GOAWAY(last_stream_id = the n-th stream) and stop (streams opened after the
               n-th are never answered), shut down writing, and read until the peer closes
      refuse   the first `n` streams of the server (all connections) get RST_STREAM
               REFUSED_STREAM as soon as their HEADERS arrive; the others are echoed
      cut      a path starting /cut: a 200 head (content-length 100000 when the query has cl=1),
               1000 body bytes, then RST_STREAM INTERNAL_ERROR (50 ms later, or in the same write
               with now=1 in the query); other paths are echoed
      hold     a path starting /hold: a 200 head (content-length 2000) and 1000 body bytes, then
               nothing until `release` is set (at most 20 s), then the other 1000 and the end
    `events`: dicts {conn, stream, method, path, body, action} with action answered, refused,
    ignored (goaway: above the last stream id), cut, reset_by_peer."""

    def __init__(self, testcase, mode="echo", n=0):
        self.mode = mode
        self.n = n
        self.lock = threading.Lock()
        self.events = []
        self.errors = []
        self.conns = 0
        self.refusals_left = n if mode == "refuse" else 0
        self.stopping = threading.Event()
        self.release = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)
        testcase.addCleanup(self.close)

    def close(self):
        self.stopping.set()
        self.release.set()
        for t in list(self.threads):
            t.join(5)
        self.listener.close()

    def record(self, **kw):
        with self.lock:
            self.events.append(kw)

    def of(self, action=None, path=None):
        with self.lock:
            return [e for e in self.events if (action is None or e["action"] == action)
                    and (path is None or e["path"] == path)]

    def _accept(self):
        while not self.stopping.is_set():
            r, _, _ = select.select([self.listener], [], [], 0.05)
            if not r:
                continue
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                idx = self.conns
                self.conns += 1
            t = threading.Thread(target=self._serve, args=(sock, idx), daemon=True)
            self.threads.append(t)
            t.start()

    def _answer(self, conn, idx, stream, req):
        body = json.dumps({"conn": idx, "stream": stream, "method": req["method"], "path": req["path"],
                           "body": req["body"][:200].decode("latin-1"), "body_len": len(req["body"]),
                           "body_crc": zlib.crc32(req["body"]), "trailers": req["trailers"]}).encode()
        conn.send_headers(stream, [(":status", "200"), ("content-type", "application/json"),
                                   ("content-length", str(len(body))), ("x-conn", str(idx))])
        conn.send_data(stream, body, end_stream=True)
        self.record(conn=idx, stream=stream, method=req["method"], path=req["path"], body=req["body"],
                    action="answered")

    def _serve(self, sock, idx):
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=cfg)
        conn.initiate_connection()
        reqs = {}
        opened = 0
        answered = []
        going_away = False
        try:
            sock.sendall(conn.data_to_send())
            while not self.stopping.is_set():
                r, _, _ = select.select([sock], [], [], 0.05)
                if not r:
                    continue
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                if going_away:
                    continue  # read until the peer closes (no reset for unread bytes)
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        f = dict(ev.headers)
                        req = {"method": f.get(":method"), "path": f.get(":path"), "headers": ev.headers,
                               "body": b"", "trailers": [], "order": opened}
                        opened += 1
                        refuse = False
                        if self.mode == "refuse":
                            with self.lock:
                                if self.refusals_left > 0:
                                    self.refusals_left -= 1
                                    refuse = True
                        if refuse:
                            conn.reset_stream(ev.stream_id, REFUSED_STREAM)
                            self.record(conn=idx, stream=ev.stream_id, method=req["method"], path=req["path"],
                                        body=b"", action="refused")
                        else:
                            reqs[ev.stream_id] = req
                    elif isinstance(ev, h2.events.DataReceived):
                        if ev.stream_id in reqs:
                            reqs[ev.stream_id]["body"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        if ev.stream_id in reqs:
                            reqs[ev.stream_id]["trailers"] = [list(t) for t in ev.headers]
                    elif isinstance(ev, h2.events.StreamReset):
                        req = reqs.pop(ev.stream_id, None)
                        self.record(conn=idx, stream=ev.stream_id, method=req and req["method"],
                                    path=req and req["path"], body=req["body"] if req else b"", action="reset_by_peer")
                    elif isinstance(ev, h2.events.StreamEnded):
                        req = reqs.pop(ev.stream_id, None)
                        if req is None:
                            continue
                        if self.mode == "goaway":
                            if req["order"] >= self.n:
                                self.record(conn=idx, stream=ev.stream_id, method=req["method"], path=req["path"],
                                            body=req["body"], action="ignored")
                                continue
                            self._answer(conn, idx, ev.stream_id, req)
                            answered.append(ev.stream_id)
                            if len(answered) == self.n:
                                conn.close_connection(last_stream_id=max(answered))
                                sock.sendall(conn.data_to_send())
                                sock.shutdown(socket.SHUT_WR)
                                going_away = True
                                break
                        elif self.mode == "cut" and req["path"].startswith("/cut"):
                            head = [(":status", "200"), ("content-type", "application/octet-stream")]
                            if "cl=1" in req["path"]:
                                head.append(("content-length", "100000"))
                            conn.send_headers(ev.stream_id, head)
                            conn.send_data(ev.stream_id, b"x" * 1000)
                            if "now=1" not in req["path"]:
                                sock.sendall(conn.data_to_send())
                                time.sleep(0.05)  # the head and the bytes go out before the reset
                            conn.reset_stream(ev.stream_id, INTERNAL_ERROR)  # now=1: in the same write
                            self.record(conn=idx, stream=ev.stream_id, method=req["method"], path=req["path"],
                                        body=req["body"], action="cut")
                        elif self.mode == "hold" and req["path"].startswith("/hold"):
                            conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "2000")])
                            conn.send_data(ev.stream_id, b"a" * 1000)
                            self.record(conn=idx, stream=ev.stream_id, method=req["method"], path=req["path"],
                                        body=req["body"], action="held")
                            sock.sendall(conn.data_to_send())
                            self.release.wait(20)
                            conn.send_data(ev.stream_id, b"b" * 1000, end_stream=True)
                        else:
                            self._answer(conn, idx, ev.stream_id, req)
                if not going_away:
                    out = conn.data_to_send()
                    if out:
                        sock.sendall(out)
        except (h2.exceptions.ProtocolError, OSError) as e:
            with self.lock:
                self.errors.append("conn %d: %r" % (idx, e))
        finally:
            sock.close()


# ---------------------------------------------------------------------------------------------
# 1. Two sidecars, plain: client -> A (protocol http2) -> B (h2c listener) -> HTTP/1.1 app
# ---------------------------------------------------------------------------------------------

class PlainChainTest(unittest.TestCase):
    def setUp(self):
        self.dir = h.make_tmpdir("pf-h2up-")
        self.app = h.Upstream("echo", name="app")
        self.addCleanup(self.app.stop)
        self.b_log = os.path.join(self.dir, "b-access.log")
        self.a_log = os.path.join(self.dir, "a-access.log")
        pb = h.simple_policy(self.app, listener={"protocol": "http"}, access_log=self.b_log)
        pb["service"] = "b"
        self.b = h.Pilotfish(pb)
        self.addCleanup(self.b.kill)
        pa = h.simple_policy("127.0.0.1:%d" % self.b.port(), cluster={"protocol": "http2"}, access_log=self.a_log)
        pa["service"] = "a"
        self.a = h.Pilotfish(pa)
        self.addCleanup(self.a.kill)

    def tearDown(self):
        stop_all(self, [self.a, self.b])

    def last_app_request(self):
        return self.app.requests()[-1]

    def test_requests_bodies_head_204_trailers(self):
        with h.Client(self.a.port(), timeout=15) as c:
            # A GET without a body.
            r = c.request("GET", "/plain?q=1", headers=[("X-Custom", "v1")])
            self.assertEqual(r.status, 200, r)
            seen = r.json()
            self.assertEqual((seen["method"], seen["target"], seen["version"]), ("GET", "/plain?q=1", "HTTP/1.1"))
            self.assertEqual(header_values(seen, "host"), ["test.local"])
            self.assertEqual(header_values(seen, "x-custom"), ["v1"])
            self.assertEqual(seen["body_len"], 0)

            # A body with content-length.
            r = c.request("POST", "/cl", body=b"hello body", headers=[("Content-Type", "text/plain")])
            self.assertEqual(r.status, 200, r)
            seen = r.json()
            self.assertEqual((seen["method"], seen["body"], seen["body_len"]), ("POST", "hello body", 10))
            self.assertEqual(header_values(seen, "content-type"), ["text/plain"])

            # A chunked body with request trailers: they reach the app as trailers.
            body = h.chunk_encode([b"abc", b"defgh", b"ij"], trailers=[("X-Checksum", "42")])
            r = c.request("POST", "/chunked-in", headers=[("Transfer-Encoding", "chunked"), ("TE", "trailers")],
                          body=body)
            self.assertEqual(r.status, 200, r)
            seen = r.json()
            self.assertEqual((seen["body"], seen["body_len"]), ("abcdefghij", 10))
            self.assertEqual([[n.lower(), v] for n, v in seen["trailers"]], [["x-checksum", "42"]], seen)

            # 1 MiB up with content-length, then 1 MiB up chunked.
            block = up.pattern_block()[:MIB]
            r = c.request("PUT", "/big-up", body=block, timeout=30)
            self.assertEqual(r.status, 200, r)
            seen = r.json()
            self.assertEqual((seen["body_len"], seen["body_crc"]), (MIB, zlib.crc32(block)))
            pieces = [block[i:i + 100000] for i in range(0, MIB, 100000)]
            r = c.request("POST", "/big-up-chunked", headers=[("Transfer-Encoding", "chunked")],
                          body=h.chunk_encode(pieces), timeout=30)
            self.assertEqual(r.status, 200, r)
            seen = r.json()
            self.assertEqual((seen["body_len"], seen["body_crc"]), (MIB, zlib.crc32(block)))

            # 1 MiB down.
            r = c.request("GET", "/download?bytes=%d" % MIB, timeout=30)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(len(r.body), MIB)
            self.assertEqual(r.body, block, "the downloaded bytes differ")

            # HEAD: the head only, its content-length kept.
            r = c.request("HEAD", "/download?bytes=5000")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, b"")
            self.assertEqual(r.header("content-length"), "5000")
            self.assertEqual(self.last_app_request()["method"], "HEAD")

            # 204: no body, the connection goes on.
            r = c.request("GET", "/status/204")
            self.assertEqual(r.status, 204, r)
            self.assertEqual(r.body, b"")
            self.assertEqual(r.header("x-status"), "204")

            # Response trailers from the app reach the HTTP/1.1 client as chunked trailers.
            r = c.request("GET", "/chunked?n=3&size=5", headers=[("TE", "trailers")])
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.body, b"".join(up.chunked_body(3, 5)))
            self.assertTrue(r.chunked, r)
            self.assertEqual([(n.lower(), v) for n, v in r.trailers], [("x-trailer", "t")], r.trailers)

            r = c.request("GET", "/last")
            self.assertEqual(r.status, 200, r)

        targets = [q["target"] for q in self.app.requests()]
        self.assertEqual(targets, ["/plain?q=1", "/cl", "/chunked-in", "/big-up", "/big-up-chunked",
                                   "/download?bytes=%d" % MIB, "/download?bytes=5000", "/status/204",
                                   "/chunked?n=3&size=5", "/last"])
        # Every request crossed A -> B on one HTTP/2 connection.
        self.assertEqual(upstream_connections(self.a), 1)
        self.assertEqual(downstream_total(self.b), 1)

    def test_http2_client_large_bodies(self):
        """An HTTP/2 client (curl) -> A: HTTP/2 on both sides of A, 1 MiB each way, 3 times."""
        blob_path = os.path.join(self.dir, "blob")
        block = up.pattern_block()[:MIB]
        with open(blob_path, "wb") as f:
            f.write(block)
        out_path = os.path.join(self.dir, "out")
        for i in range(3):
            r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-m", "15", "-T", blob_path, "-o", out_path,
                                "-w", "%{http_version} %{response_code}",
                                "http://127.0.0.1:%d/h2-up/%d" % (self.a.port(), i)], capture_output=True, timeout=30)
            self.assertEqual((r.returncode, r.stdout), (0, b"2 200"),
                             "upload %d: %s\nA: %s\nB: %s" % (i, r.stderr.decode(errors="replace"),
                                                             access_lines(self.a_log)[-1:], access_lines(self.b_log)[-1:]))
            seen = self.last_app_request()
            self.assertEqual((seen["target"], seen["body_len"], seen["body_crc"]),
                             ("/h2-up/%d" % i, MIB, zlib.crc32(block)))
            r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-m", "15", "-o", out_path,
                                "-w", "%{http_version} %{response_code}",
                                "http://127.0.0.1:%d/download?bytes=%d&i=%d" % (self.a.port(), MIB, i)],
                               capture_output=True, timeout=30)
            self.assertEqual((r.returncode, r.stdout), (0, b"2 200"), r.stderr)
            with open(out_path, "rb") as f:
                self.assertEqual(f.read(), block, "download %d differs" % i)
        self.assertEqual(downstream_total(self.b), 1)

    def test_http1_client_large_download_over_the_h2_hop(self):
        """An HTTP/1.1 client reads 8 MiB through A, whose hop to B is HTTP/2, three times: A
        gathers a read's DATA frames into one write at the turn's end, and the stream's window
        must keep opening again as the client reads, until the whole body is through."""
        for i in range(3):
            with h.Client(self.a.port(), timeout=30) as c:
                c.send(h.build_request("GET", "/download?bytes=%d&i=%d" % (8 * MIB, i)))
                r = c.read_response(timeout=30)
            self.assertEqual(r.status, 200)
            self.assertEqual(len(r.body), 8 * MIB)
            self.assertEqual(r.body[:MIB], up.pattern_block()[:MIB])
        self.assertEqual(downstream_total(self.b), 1)

    def test_one_connection_for_sequential_and_concurrent_requests(self):
        for i in range(50):
            r = h.request(self.a.port(), "GET", "/seq/%d" % i)  # a new client connection each
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["target"], "/seq/%d" % i)
        self.assertEqual(downstream_total(self.a), 50)
        self.assertEqual(upstream_connections(self.a), 1, "A -> B: one HTTP/2 connection for 50 sequential")
        self.assertEqual(downstream_total(self.b), 1)

        # /slow keeps each request at the app a while, so that they overlap at A and B.
        results = h.run_concurrently(
            [lambda i=i: h.request(self.a.port(), "POST", "/slow?ms=300&i=%d" % i, body=b"n=%d" % i, timeout=20)
             for i in range(50)], timeout=40)
        for i, r in enumerate(results):
            self.assertIsInstance(r, h.Response, r)
            self.assertEqual(r.status, 200, r)
            seen = r.json()
            self.assertEqual((seen["target"], seen["body"]), ("/slow?ms=300&i=%d" % i, "n=%d" % i))
        self.assertEqual(downstream_total(self.a), 100)
        self.assertEqual(upstream_connections(self.a), 1, "A -> B: one HTTP/2 connection for 50 concurrent")
        self.assertEqual(downstream_total(self.b), 1, "B accepted more than one connection from A")
        # The app saw them overlap (B -> app is HTTP/1.1: one connection per request in flight).
        self.assertGreater(self.app.stats()["connections"], 1)
        lines = h.wait_for(lambda: len(access_lines(self.b_log)) >= 100 and access_lines(self.b_log), 5,
                           what="B's 100 access-log lines")
        self.assertEqual(sorted(l["status"] for l in lines), [200] * 100)


# ---------------------------------------------------------------------------------------------
# 2. The same hop over mTLS: auto (ALPN) and http2
# ---------------------------------------------------------------------------------------------

class MtlsChainTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = h.make_tmpdir("pf-h2up-tls-")
        cls.pki = h.Pki(os.path.join(cls.dir, "pki"))
        cls.cert_a = cls.pki.leaf("a", uris=[sid("a")])
        cls.cert_b = cls.pki.leaf("b", uris=[sid("b")])

    def setUp(self):
        self.pfs = []
        self.app = h.Upstream("echo", name="app")
        self.addCleanup(self.app.stop)

    def tearDown(self):
        stop_all(self, self.pfs)

    def identity(self, pair):
        return {"cert": pair[0], "key": pair[1], "ca": self.pki.cert}

    def chain(self, protocol, b_http2=True):
        listener = {"mtls": True}
        if not b_http2:
            listener["http2"] = False
        pb = h.simple_policy(self.app, listener=listener)
        pb["service"] = "b"
        pb["identity"] = self.identity(self.cert_b)
        b = h.Pilotfish(pb)
        self.addCleanup(b.kill)
        pa = h.simple_policy("127.0.0.1:%d" % b.port(),
                             cluster={"mtls": {"server_identity": sid("b")}, "protocol": protocol})
        pa["service"] = "a"
        pa["identity"] = self.identity(self.cert_a)
        a = h.Pilotfish(pa)
        self.addCleanup(a.kill)
        self.pfs += [a, b]
        return a, b

    def concurrent(self, a, n, prefix):
        results = h.run_concurrently(
            [lambda i=i: h.request(a.port(), "POST", "/slow?ms=300&%s=%d" % (prefix, i), body=b"%s-%d" % (prefix.encode(), i),
                                   timeout=20) for i in range(n)], timeout=40)
        for i, r in enumerate(results):
            self.assertIsInstance(r, h.Response, r)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["body"], "%s-%d" % (prefix, i))
        return results

    def check_xfcc(self, seen):
        xfcc = header_values(seen, "x-forwarded-client-cert")
        self.assertEqual(len(xfcc), 1, seen["headers"])
        self.assertTrue(xfcc[0].startswith("By=%s;URI=%s;" % (sid("b"), sid("a"))), xfcc)
        self.assertEqual(header_values(seen, "x-forwarded-proto"), ["https"])

    def multiplexed(self, protocol):
        a, b = self.chain(protocol)
        r = h.request(a.port(), "POST", "/first", body=b"over mtls")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body"], "over mtls")
        self.check_xfcc(r.json())
        self.concurrent(a, 30, "c")
        self.assertEqual(downstream_total(a), 31)
        # 30 clients of A at once, one connection (and one handshake) at B: HTTP/2 streams.
        self.assertEqual(downstream_total(b), 1, "B saw several connections: A did not multiplex (no h2?)")
        self.assertEqual(tls_inbound_ok(b), 1)
        self.assertEqual(tls_outbound_ok(a), 1)
        self.assertEqual(upstream_connections(a), 1)
        for seen in self.app.requests():
            self.check_xfcc(seen)

    def test_auto_picks_h2_and_multiplexes(self):
        self.multiplexed("auto")

    def test_http2_over_mtls_multiplexes(self):
        self.multiplexed("http2")

    def test_auto_falls_back_to_http11(self):
        a, b = self.chain("auto", b_http2=False)
        for i in range(3):
            r = h.request(a.port(), "POST", "/seq/%d" % i, body=b"s%d" % i)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["body"], "s%d" % i)
            self.check_xfcc(r.json())
        self.concurrent(a, 10, "f")
        # HTTP/1.1 to B: one request per connection at a time, so the 10 overlapping requests
        # took several connections.
        self.assertGreater(downstream_total(b), 1, "B saw one connection: not HTTP/1.1?")
        self.assertEqual(len(self.app.requests()), 13)
        r = h.request(a.port(), "GET", "/after")
        self.assertEqual(r.status, 200, r)


# ---------------------------------------------------------------------------------------------
# 3. gRPC through one sidecar and through two
# ---------------------------------------------------------------------------------------------

class GrpcApp:
    """A gRPC server (python3-grpcio) on 127.0.0.1 (h2c), service test.Svc, raw bytes:
    Echo (unary), Collect (client streaming), Spread (server streaming), Chat (bidirectional),
    Fail (aborts NOT_FOUND), Sleep (records its deadline, waits until cancelled)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.metadata = []          # invocation metadata of each call
        self.sleep_remaining = []   # Sleep: context.time_remaining() at its start
        self.sleep_cancelled = threading.Event()
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
            "Spread": grpc.unary_stream_rpc_method_handler(self.spread),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
            "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky),
        }
        self.flaky_left = 0   # Flaky: answers UNAVAILABLE (trailers-only) this many more times
        self.flaky_calls = 0
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Svc", handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = "127.0.0.1:%d" % self.port
        self.server.start()

    def stop(self):
        self.server.stop(None).wait(5)

    def note(self, context):
        with self.lock:
            self.metadata.append(dict((k, v) for k, v in context.invocation_metadata()))

    def echo(self, request, context):
        self.note(context)
        context.send_initial_metadata([("x-initial", "i1")])
        context.set_trailing_metadata([("x-trailer", "t1"), ("x-bin-bin", b"\x00\x01\xff")])
        return b"echo:" + request

    def collect(self, request_iterator, context):
        self.note(context)
        msgs = list(request_iterator)
        context.set_trailing_metadata([("x-count", str(len(msgs)))])
        return b"|".join(msgs)

    def spread(self, request, context):
        self.note(context)
        for i in range(int(request)):
            yield b"part-%d" % i
        context.set_trailing_metadata([("x-spread", "done")])

    def chat(self, request_iterator, context):
        self.note(context)
        for m in request_iterator:
            yield b"re:" + m

    def fail(self, request, context):
        self.note(context)
        context.set_trailing_metadata([("x-why", "gone")])
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

    def flaky(self, request, context):
        with self.lock:
            self.flaky_calls += 1
            fail = self.flaky_left > 0
            self.flaky_left -= 1 if fail else 0
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b"flaky:" + request

    def sleep(self, request, context):
        self.note(context)
        with self.lock:
            self.sleep_remaining.append(context.time_remaining())
        for _ in range(100):  # 10 s at most
            if not context.is_active():
                self.sleep_cancelled.set()
                break
            time.sleep(0.1)
        return b"late"


class GrpcBase(unittest.TestCase):
    def grpc_app(self):
        g = GrpcApp()
        self.addCleanup(g.stop)
        return g

    def channel(self, port):
        ch = grpc.insecure_channel("127.0.0.1:%d" % port, options=[("grpc.enable_http_proxy", 0),
                                                                     ("grpc.use_local_subchannel_pool", 1)])
        self.addCleanup(ch.close)
        return ch

    def check_calls(self, port, g, tag):
        ch = self.channel(port)
        # Unary, metadata both ways, trailing metadata.
        resp, call = ch.unary_unary("/test.Svc/Echo").with_call(
            b"hello-" + tag.encode(), timeout=10, metadata=[("x-custom", "c1"), ("x-data-bin", b"\x01\x02")])
        self.assertEqual(resp, b"echo:hello-" + tag.encode())
        self.assertEqual(call.code(), grpc.StatusCode.OK)
        self.assertIn(("x-initial", "i1"), list(call.initial_metadata()))
        trailers = list(call.trailing_metadata())
        self.assertIn(("x-trailer", "t1"), trailers)
        self.assertIn(("x-bin-bin", b"\x00\x01\xff"), trailers)
        md = g.metadata[-1]
        self.assertEqual(md.get("x-custom"), "c1", md)
        self.assertEqual(md.get("x-data-bin"), b"\x01\x02", md)

        # Client streaming: 100 messages.
        msgs = [b"m%d" % i for i in range(100)]
        resp, call = ch.stream_unary("/test.Svc/Collect").with_call(iter(msgs), timeout=10)
        self.assertEqual(resp, b"|".join(msgs))
        self.assertIn(("x-count", "100"), list(call.trailing_metadata()))

        # Server streaming: 100 messages.
        it = ch.unary_stream("/test.Svc/Spread")(b"100", timeout=10)
        got = list(it)
        self.assertEqual(got, [b"part-%d" % i for i in range(100)])
        self.assertEqual(it.code(), grpc.StatusCode.OK)
        self.assertIn(("x-spread", "done"), list(it.trailing_metadata()))

        # Bidirectional: 100 each way.
        got = list(ch.stream_stream("/test.Svc/Chat")(iter(msgs), timeout=10))
        self.assertEqual(got, [b"re:" + m for m in msgs])

        # An aborted call: its status, message and trailing metadata (trailers-only).
        with self.assertRaises(grpc.RpcError) as caught:
            ch.unary_unary("/test.Svc/Fail")(b"k42", timeout=10)
        e = caught.exception
        self.assertEqual(e.code(), grpc.StatusCode.NOT_FOUND, e)
        self.assertEqual(e.details(), "no such thing: k42")
        self.assertIn(("x-why", "gone"), list(e.trailing_metadata() or ()))
        return ch

    def check_big(self, port):
        """1 MiB messages: unary, and 3 of them in a bidirectional call (flow control both ways)."""
        ch = self.channel(port)
        big = bytes(range(256)) * (MIB // 256)
        self.assertEqual(ch.unary_unary("/test.Svc/Echo")(big, timeout=15), b"echo:" + big)
        msgs = [bytes([i]) * MIB for i in range(3)]
        got = list(ch.stream_stream("/test.Svc/Chat")(iter(msgs), timeout=15))
        self.assertEqual(got, [b"re:" + m for m in msgs])


class GrpcTest(GrpcBase):
    def test_grpc_through_one_sidecar(self):
        g = self.grpc_app()
        pf = h.Pilotfish(h.simple_policy(g.address, cluster={"protocol": "http2"}))
        self.addCleanup(pf.kill)
        ch = self.check_calls(pf.port(), g, "one")
        self.assertEqual(metric(pf, "pilotfish_grpc_responses_total", listener="ingress", cluster="app",
                                grpc_code="5"), 1)
        # Echo, Collect, Spread, Chat.
        self.assertEqual(metric(pf, "pilotfish_grpc_responses_total", listener="ingress", cluster="app",
                                grpc_code="0"), 4)
        self.assertEqual(upstream_connections(pf), 1)
        self.check_big(pf.port())

        # A client deadline reaches the server (grpc-timeout), and the call ends DEADLINE_EXCEEDED.
        with self.assertRaises(grpc.RpcError) as caught:
            ch.unary_unary("/test.Svc/Sleep")(b"", timeout=1.0)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED, caught.exception)
        self.assertEqual(len(g.sleep_remaining), 1)
        self.assertIsNotNone(g.sleep_remaining[0], "the server got no deadline (no grpc-timeout passed on)")
        self.assertLess(g.sleep_remaining[0], 2.0, "more time than the client's deadline of 1 s")
        self.assertTrue(g.sleep_cancelled.wait(10), "the server's call was never ended")
        # pilotfish goes on.
        self.assertEqual(ch.unary_unary("/test.Svc/Echo")(b"after", timeout=10), b"echo:after")
        pf.stop_and_check(self)

    def test_retries_on_unavailable(self):
        # retry.on: unavailable: a trailers-only UNAVAILABLE is tried again, and the client sees
        # the second attempt's answer; without it, the client gets the UNAVAILABLE.
        g = self.grpc_app()
        pf = h.Pilotfish(h.simple_policy(g.address, cluster={"protocol": "http2",
                                                             "retry": {"retries": 2, "on": ["unavailable"]}}))
        self.addCleanup(pf.kill)
        g.flaky_left = 1
        self.assertEqual(self.channel(pf.port()).unary_unary("/test.Svc/Flaky")(b"x", timeout=10), b"flaky:x")
        self.assertEqual(g.flaky_calls, 2)
        self.assertEqual(metric(pf, "pilotfish_retries_total", cluster="app"), 1)
        self.assertEqual(metric(pf, "pilotfish_grpc_responses_total", listener="ingress", cluster="app",
                                grpc_code="0"), 1)
        self.assertIsNone(metric(pf, "pilotfish_grpc_responses_total", listener="ingress", cluster="app",
                                 grpc_code="14"))

        plain = h.Pilotfish(h.simple_policy(g.address, cluster={"protocol": "http2"}))
        self.addCleanup(plain.kill)
        g.flaky_left = 1
        with self.assertRaises(grpc.RpcError) as caught:
            self.channel(plain.port()).unary_unary("/test.Svc/Flaky")(b"y", timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE, caught.exception)
        self.assertEqual(caught.exception.details(), "warming up")
        self.assertEqual(g.flaky_calls, 3)
        self.assertEqual(metric(plain, "pilotfish_grpc_responses_total", listener="ingress", cluster="app",
                                grpc_code="14"), 1)
        stop_all(self, [pf, plain])

    def two_sidecars(self, g):
        pb = h.simple_policy(g.address, cluster={"protocol": "http2"})
        pb["service"] = "b"
        b = h.Pilotfish(pb)
        self.addCleanup(b.kill)
        pa = h.simple_policy("127.0.0.1:%d" % b.port(), cluster={"protocol": "http2"})
        pa["service"] = "a"
        a = h.Pilotfish(pa)
        self.addCleanup(a.kill)
        return a, b

    def test_grpc_large_messages_through_two_sidecars(self):
        g = self.grpc_app()
        a, b = self.two_sidecars(g)
        self.check_big(a.port())
        stop_all(self, [a, b])

    def test_grpc_through_two_sidecars(self):
        g = self.grpc_app()
        a, b = self.two_sidecars(g)
        self.check_calls(a.port(), g, "two")
        # Another two client channels: still one connection A -> B.
        for i in range(2):
            ch = self.channel(a.port())
            self.assertEqual(ch.unary_unary("/test.Svc/Echo")(b"c%d" % i, timeout=10), b"echo:c%d" % i)
        self.assertEqual(downstream_total(a), 3)
        self.assertEqual(downstream_total(b), 1)
        with self.assertRaises(grpc.RpcError) as caught:
            self.channel(a.port()).unary_unary("/test.Svc/Sleep")(b"", timeout=1.0)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertIsNotNone(g.sleep_remaining[-1], "the server got no deadline through two sidecars")
        self.assertLess(g.sleep_remaining[-1], 2.0, "more time than the client's deadline of 1 s")
        stop_all(self, [a, b])


# ---------------------------------------------------------------------------------------------
# 4. GOAWAY and REFUSED_STREAM; 5. a stream reset mid-response
# ---------------------------------------------------------------------------------------------

class RawUpstreamTest(unittest.TestCase):
    def start(self, server, cluster=None):
        self.dir = h.make_tmpdir("pf-h2raw-")
        self.log_path = os.path.join(self.dir, "access.log")
        c = {"protocol": "http2"}
        c.update(cluster or {})
        pf = h.Pilotfish(h.simple_policy(server.address, cluster=c, access_log=self.log_path))
        self.addCleanup(pf.kill)
        return pf

    def post(self, pf, path, body, timeout=15):
        return h.request(pf.port(), "POST", path, body=body, timeout=timeout)

    def test_goaway_after_n_streams_sequential(self):
        srv = RawH2Server(self, "goaway", n=3)
        pf = self.start(srv)
        for i in range(10):
            r = self.post(pf, "/g/%d" % i, b"body-%d" % i)
            self.assertEqual(r.status, 200, (i, r, pf.log(20)))
            self.assertEqual(r.json()["path"], "/g/%d" % i)
            self.assertEqual(r.json()["body"], "body-%d" % i)
        answered = srv.of("answered")
        self.assertEqual(sorted(e["path"] for e in answered), sorted("/g/%d" % i for i in range(10)),
                         "each request processed exactly once")
        per_conn = {}
        for e in answered:
            per_conn[e["conn"]] = per_conn.get(e["conn"], 0) + 1
        self.assertLessEqual(max(per_conn.values()), 3, per_conn)
        self.assertGreaterEqual(srv.conns, 4)
        self.assertEqual(srv.errors, [])
        pf.stop_and_check(self)

    def test_goaway_with_streams_in_flight(self):
        # 10 POSTs at once: the server answers the first 4 streams of a connection, then GOAWAY
        # (last_stream_id = the 4th); the streams above it were not processed and go again.
        srv = RawH2Server(self, "goaway", n=4)
        pf = self.start(srv)
        results = h.run_concurrently([lambda i=i: self.post(pf, "/f/%d" % i, b"in-flight-%d" % i, timeout=20)
                                      for i in range(10)], timeout=40)
        for i, r in enumerate(results):
            self.assertIsInstance(r, h.Response, (i, r, pf.log(20)))
            self.assertEqual(r.status, 200, (i, r, pf.log(20)))
            self.assertEqual(r.json()["path"], "/f/%d" % i)
            self.assertEqual(r.json()["body"], "in-flight-%d" % i)
        answered = sorted(e["path"] for e in srv.of("answered"))
        self.assertEqual(answered, sorted("/f/%d" % i for i in range(10)), "each request processed exactly once")
        self.assertGreaterEqual(srv.conns, 3)
        self.assertEqual(metric(pf, "pilotfish_requests_total", listener="ingress", route="", cluster="app", code="200"), 10)
        r = self.post(pf, "/after", b"x")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(srv.errors, [])
        pf.stop_and_check(self)

    def test_refused_stream_is_sent_again(self):
        srv = RawH2Server(self, "refuse", n=1)
        pf = self.start(srv)
        r = self.post(pf, "/once", b"not-idempotent")
        self.assertEqual(r.status, 200, (r, pf.log(20)))
        self.assertEqual(r.json()["body"], "not-idempotent")
        events = [(e["action"], e["path"]) for e in srv.events]
        self.assertEqual(events, [("refused", "/once"), ("answered", "/once")], srv.events)
        self.assertEqual([e["body"] for e in srv.of("answered")], [b"not-idempotent"])
        # Not a retry: the refused stream was not processed.
        self.assertEqual(metric(pf, "pilotfish_retries_total", cluster="app"), 0)
        self.assertEqual(metric(pf, "pilotfish_requests_total", listener="ingress", route="", cluster="app", code="200"), 1)
        line = h.wait_for(lambda: access_lines(self.log_path), 5, what="the access-log line")[0]
        self.assertEqual((line["path"], line["status"], line["error"]), ("/once", 200, ""), line)
        r = self.post(pf, "/twice", b"y")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(srv.errors, [])
        pf.stop_and_check(self)

    def test_refused_every_time_gives_up_after_three_resends(self):
        srv = RawH2Server(self, "refuse", n=1000)
        pf = self.start(srv)
        r = self.post(pf, "/never", b"z")
        self.assertIn(r.status, (502, 503), (r, pf.log(20)))
        self.assertEqual(len(srv.of("refused", "/never")), 4, srv.events)  # the first and 3 resends
        self.assertEqual(srv.of("answered"), [])
        self.assertTrue(pf.alive())
        pf.stop_and_check(self)

    def test_response_pieces_go_out_before_the_stream_ends(self):
        # pilotfish gathers what one read of the HTTP/2 connection brings for a stream (its
        # HEADERS and DATA) into one write to the HTTP/1.1 client at the end of the loop turn:
        # the head and the first bytes must still reach the client while the stream is open.
        srv = RawH2Server(self, "hold")
        pf = self.start(srv)
        with h.Client(pf.port(), timeout=10) as c:
            c.send(h.build_request("GET", "/hold"))
            deadline = time.monotonic() + 10
            while b"\r\n\r\n" not in c.buf or len(c.buf) - c.buf.find(b"\r\n\r\n") - 4 < 1000:
                self.assertTrue(c._fill(deadline), "closed before the first piece: %r" % bytes(c.buf[:200]))
            self.assertFalse(srv.release.is_set())
            self.assertTrue(c.buf.startswith(b"HTTP/1.1 200 "), bytes(c.buf[:100]))
            self.assertEqual(len(srv.of("held")), 1)
            srv.release.set()
            r = c.read_response(timeout=10)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"a" * 1000 + b"b" * 1000)
        self.assertEqual(srv.errors, [])
        pf.stop_and_check(self)

    def test_stream_reset_mid_response(self):
        srv = RawH2Server(self, "cut")
        pf = self.start(srv)
        self.assertEqual(h.request(pf.port(), "GET", "/before").status, 200)
        for path in ("/cut?cl=1", "/cut", "/cut?cl=1&now=1"):
            with self.subTest(path=path):
                with h.Client(pf.port(), timeout=10) as c:
                    c.send(h.build_request("GET", path))
                    with self.assertRaises(h.Closed) as caught:
                        r = c.read_response(timeout=10)
                        self.fail("a complete response for a stream reset mid-body: %r" % r)
                    if "cl=1" in path:
                        self.assertIn("of 100000 body bytes", str(caught.exception))
                r = h.request(pf.port(), "GET", "/after%s" % path)
                self.assertEqual(r.status, 200, r)
        self.assertEqual(len(srv.of("cut")), 3)
        self.assertEqual([e["path"] for e in srv.of("answered")],
                         ["/before", "/after/cut?cl=1", "/after/cut", "/after/cut?cl=1&now=1"])
        self.assertEqual(srv.conns, 1, "a stream reset should not cost the shared connection")
        lines = h.wait_for(lambda: len(access_lines(self.log_path)) >= 7 and access_lines(self.log_path), 5,
                           what="7 access-log lines")
        cut = [l for l in lines if l["path"].startswith("/cut")]
        self.assertEqual([l["error"] for l in cut], ["upstream_reset"] * 3, cut)
        self.assertEqual(srv.errors, [])
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# 6. pilotfish check
# ---------------------------------------------------------------------------------------------

class CheckTest(unittest.TestCase):
    def check(self, protocol, mtls=False):
        d = h.make_tmpdir("pf-h2upcheck-")
        path = os.path.join(d, "policy.yaml")
        text = ""
        if mtls:
            pki = h.Pki(os.path.join(d, "pki"))
            cert, key = pki.leaf("a", uris=[sid("a")])
            text = "identity:\n  cert: %s\n  key: %s\n  ca: %s\n" % (cert, key, pki.cert)
        text += ("version: 1\nlisteners:\n  - name: in\n    address: 127.0.0.1:0\n    routes:\n"
                "      - cluster: app\nclusters:\n  - name: app\n    endpoints: [127.0.0.1:9]\n"
                "    protocol: %s\n" % protocol)
        if mtls:
            text += "    mtls: {server_identity: %s}\n" % sid("b")
        with open(path, "w") as f:
            f.write(text)
        rc, out, err = h.run_cli(["check", "--config", path])
        return rc, out + err, path

    def test_protocol_values(self):
        for good in ("http1", "http2"):
            with self.subTest(protocol=good):
                rc, out, _ = self.check(good)
                self.assertEqual(rc, 0, out)
        rc, out, _ = self.check("auto", mtls=True)
        self.assertEqual(rc, 0, out)
        for bad, words in (("auto", "clusters[0].protocol: auto needs mtls"),
                           ("http3", "clusters[0].protocol: 'http3' is not one of http1, http2 or auto")):
            with self.subTest(protocol=bad):
                rc, out, path = self.check(bad)
                self.assertEqual(rc, 1, out)
                self.assertRegex(out, r"(?m)^%s:10:\d+: .*%s" % (re.escape(path), re.escape(words)), out)


if __name__ == "__main__":
    h.main()
