#!/usr/bin/env python3
"""The HTTP/1.1 data path: keep-alive and pooling, pipelining, chunked both ways, headers,
path normalisation, routing, load balancing, HEAD/204/304, HTTP/1.0, 100-continue, access log."""

import json
import os
import socket
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import upstream as up  # noqa: E402


def header_values(req, name):
    """All values of a header as the upstream received it."""
    return [v for n, v in req["headers"] if n.lower() == name.lower()]


def header_names(req):
    return [n.lower() for n, _ in req["headers"]]


def connection_tokens(values):
    out = []
    for v in values:
        out += [t.strip().lower() for t in (v or "").split(",") if t.strip()]
    return out


class ProxyTest(unittest.TestCase):
    """One echo upstream and one pilotfish (1 worker) per test."""

    listener = None
    cluster = None
    workers = 1

    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)
        self.pf = h.Pilotfish(h.simple_policy(self.up, listener=self.listener, cluster=self.cluster,
                                              workers=self.workers))
        self.addCleanup(self.pf.kill)
        self.port = self.pf.port()

    def tearDown(self):
        self.pf.stop_and_check(self)

    def client(self, timeout=5.0):
        c = h.Client(self.port, timeout=timeout)
        self.addCleanup(c.close)
        return c


class KeepAliveTest(ProxyTest):
    def test_keepalive_reuses_one_upstream_connection(self):
        c = self.client()
        conns = set()
        for i in range(10):
            r = c.request("GET", "/ka/%d" % i)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["target"], "/ka/%d" % i)
            conns.add(r.json()["conn"])
        st = self.up.stats()
        self.assertEqual(st["connections"], 1, "10 keep-alive requests should use one upstream connection")
        self.assertEqual(len(conns), 1)
        self.assertEqual(len(st["requests"]), 10)
        self.assertFalse(c.is_closed(0.2), "client connection should stay open")

    def test_upstream_pool_is_shared_by_sequential_client_connections(self):
        for i in range(5):
            with h.Client(self.port) as c:
                r = c.request("GET", "/seq/%d" % i)
                self.assertEqual(r.status, 200, r)
        self.assertEqual(self.up.stats()["connections"], 1,
                         "sequential requests from different client connections should reuse the pooled connection")

    def test_client_connection_close(self):
        c = self.client()
        r = c.request("GET", "/close-me", headers=[("Connection", "close")])
        self.assertEqual(r.status, 200)
        self.assertIn("close", connection_tokens(r.headers_all("connection")))
        self.assertTrue(c.is_closed(2), "pilotfish should close after a `Connection: close` request")

    def test_close_asked_by_the_client_delivers_a_large_answer_to_a_slow_reader(self):
        # The client asked for the close and sent nothing more: pilotfish closes outright once
        # the last byte is with the kernel (no lingering read). What the kernel still holds must
        # reach a reader that takes its time, all of it, ended by FIN, not a reset.
        size = 3 * 1024 * 1024
        c = self.client(timeout=20.0)
        small = socket.socket()
        small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # before connecting: the window
        small.settimeout(20.0)
        small.connect(("127.0.0.1", self.port))
        c.sock.close()
        c.sock = small
        c.send(h.build_request("GET", "/download?bytes=%d" % size, [("Connection", "close")], None,
                               "HTTP/1.1", "test.local"))
        time.sleep(0.5)  # the answer fills the socket buffers; pilotfish waits on a full queue
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.body), size)
        block = up.pattern_block()
        self.assertEqual(zlib.crc32(r.body), zlib.crc32((block * (size // len(block) + 1))[:size]))
        self.assertTrue(c.is_closed(5), "pilotfish should close after the answer")
        self.assertFalse(c.reset, "the close must be a FIN after the last byte, not a reset")

    def test_a_request_pipelined_after_a_close_keeps_the_lingering_close(self):
        # Bytes after the request that asked for the close: pilotfish still lingers (reads and
        # discards) so that its close does not reset the answer away.
        c = self.client()
        c.send(h.build_request("GET", "/first", [("Connection", "close")], None, "HTTP/1.1", "test.local") +
               h.build_request("GET", "/second", None, None, "HTTP/1.1", "test.local") + b"x" * 100000)
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["target"], "/first")
        self.assertTrue(c.is_closed(5))
        self.assertFalse(c.reset, "the answer's connection must end with a FIN, not a reset")
        self.assertEqual([q["target"] for q in self.up.requests()], ["/first"])

    def test_upstream_closing_its_connection_does_not_break_the_client(self):
        c = self.client()
        r = c.request("GET", "/close")
        self.assertEqual(r.status, 200, r)
        time.sleep(0.1)  # the upstream has closed its side
        for i in range(3):
            r = c.request("GET", "/after-close/%d" % i)
            self.assertEqual(r.status, 200, r)
        self.assertEqual(self.up.stats()["connections"], 2)


class CloseAfterEachUpstreamTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("close")
        self.addCleanup(self.up.stop)
        self.pf = h.Pilotfish(h.simple_policy(self.up))
        self.addCleanup(self.pf.kill)

    def tearDown(self):
        self.pf.stop_and_check(self)

    def test_upstream_that_closes_after_each_response(self):
        with h.Client(self.pf.port()) as c:
            for i in range(5):
                r = c.request("POST" if i % 2 else "GET", "/cae/%d" % i, body=b"b%d" % i if i % 2 else None)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["target"], "/cae/%d" % i)
            self.assertFalse(c.is_closed(0.2), "the client connection outlives the upstream connections")
        self.assertEqual(self.up.stats()["connections"], 5)


class PipeliningTest(ProxyTest):
    def test_pipelined_requests_answered_in_order(self):
        c = self.client()
        reqs = (h.build_request("GET", "/slow?ms=300")
                + h.build_request("GET", "/p/2")
                + h.build_request("POST", "/p/3", body=b"body-of-three")
                + h.build_request("GET", "/p/4")
                + h.build_request("POST", "/p/5", headers=[("Transfer-Encoding", "chunked")],
                                  body=h.chunk_encode([b"five", b"-chunked"])))
        c.send(reqs)
        targets = []
        for _ in range(5):
            r = c.read_response(timeout=10)
            self.assertEqual(r.status, 200, r)
            targets.append(r.json()["target"])
            if r.json()["target"] == "/p/3":
                self.assertEqual(r.json()["body"], "body-of-three")
            if r.json()["target"] == "/p/5":
                self.assertEqual(r.json()["body"], "five-chunked")
        self.assertEqual(targets, ["/slow?ms=300", "/p/2", "/p/3", "/p/4", "/p/5"])

    def test_pipelined_head_and_get(self):
        c = self.client()
        c.send(h.build_request("GET", "/a") + h.build_request("HEAD", "/b") + h.build_request("GET", "/c"))
        r1 = c.read_response("GET")
        r2 = c.read_response("HEAD")
        r3 = c.read_response("GET")
        self.assertEqual([r1.status, r2.status, r3.status], [200, 200, 200])
        self.assertEqual(r1.json()["target"], "/a")
        self.assertEqual(r2.body, b"")
        self.assertEqual(r3.json()["target"], "/c")
        self.assertFalse(c.is_closed(0.2))
        self.assertEqual(bytes(c.buf), b"", "no stray bytes after the responses")


class ChunkedTest(ProxyTest):
    def test_chunked_request_body(self):
        c = self.client()
        pieces = [b"hello ", b"chunked ", b"world"]
        r = c.request("POST", "/up", headers=[("Transfer-Encoding", "chunked")], body=h.chunk_encode(pieces))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body"], "hello chunked world")
        self.assertEqual(r.json()["body_len"], 19)
        r = c.request("GET", "/next")
        self.assertEqual(r.status, 200)

    def test_chunked_request_sent_in_pieces(self):
        c = self.client()
        c.send(h.build_request("POST", "/pieces", headers=[("Transfer-Encoding", "chunked")]))
        body = h.chunk_encode([b"a" * 1000, b"b" * 3000, b"c" * 7])
        for i in range(0, len(body), 333):
            c.send(body[i:i + 333])
            time.sleep(0.005)
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body"], "a" * 1000 + "b" * 3000 + "c" * 7)

    def test_chunked_request_with_trailers(self):
        # Trailers travel to the upstream; those that frame, route or authenticate, and those
        # only pilotfish writes, do not.
        r = h.request(self.port, "POST", "/trailers", headers=[("Transfer-Encoding", "chunked")],
                      body=h.chunk_encode([b"abc"], trailers=[
                          ("X-Checksum", "1"), ("Content-Length", "99"), ("Host", "evil"),
                          ("Authorization", "Bearer x"), ("X-Forwarded-Client-Cert", "By=spiffe://x/y"),
                          ("x_forwarded_for", "10.9.9.9"), ("Server-Timing", "db;dur=5")]))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body"], "abc")
        self.assertEqual(r.json()["trailers"], [["X-Checksum", "1"], ["Server-Timing", "db;dur=5"]])

    def test_invalid_request_trailer_is_refused(self):
        c = self.client()
        c.send(h.build_request("POST", "/bad-trailer", headers=[("Transfer-Encoding", "chunked")])
               + b"3\r\nabc\r\n0\r\nX-Bad\x01: v\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 400, r)

    def test_response_trailers_reach_the_client(self):
        c = self.client()
        r = c.request("GET", "/chunked?n=2&size=4")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.trailers, [("X-Trailer", "t")])
        r = c.request("GET", "/after-trailers")
        self.assertEqual(r.status, 200)

    def test_large_chunked_request_body(self):
        c = self.client(timeout=20)
        block = up.pattern_block()[:65536]
        n = 40  # 2.5 MiB
        c.send(h.build_request("POST", "/bigchunked", headers=[("Transfer-Encoding", "chunked")]))
        crc = 0
        for _ in range(n):
            c.send(b"%x\r\n" % len(block) + block + b"\r\n")
            crc = zlib.crc32(block, crc)
        c.send(b"0\r\n\r\n")
        r = c.read_response(timeout=20)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body_len"], n * len(block))
        self.assertEqual(r.json()["body_crc"], crc)

    def test_chunked_response(self):
        c = self.client()
        r = c.request("GET", "/chunked?n=7&size=1000")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"".join(up.chunked_body(7, 1000)))
        self.assertEqual(r.header("x-chunked"), "yes")
        r = c.request("GET", "/after-chunked")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["target"], "/after-chunked")

    def test_content_length_request_body(self):
        body = bytes(range(256)) * 400
        r = h.request(self.port, "POST", "/cl", body=body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body_len"], len(body))
        self.assertEqual(r.json()["body_crc"], zlib.crc32(body))

    def test_http10_client_gets_no_chunked_response(self):
        c = self.client()
        c.send(h.build_request("GET", "/chunked?n=3&size=5", version="HTTP/1.0"))
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        te = r.header("transfer-encoding")
        self.assertTrue(te is None or "chunked" not in te.lower(),
                        "an HTTP/1.0 client must not get a chunked response: %r" % (r.raw_head,))
        self.assertEqual(r.body, b"".join(up.chunked_body(3, 5)))
        self.assertTrue(c.is_closed(2))


class HeadersTest(ProxyTest):
    def test_hop_by_hop_request_headers_removed(self):
        r = h.request(self.port, "GET", "/hop", headers=[
            ("Connection", "keep-alive, X-Drop-Me"), ("X-Drop-Me", "1"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("X-Keep", "1")])
        self.assertEqual(r.status, 200, r)
        req = r.json()
        names = header_names(req)
        self.assertIn("x-keep", names)
        for gone in ("x-drop-me", "keep-alive", "te"):
            self.assertNotIn(gone, names, "%s must not be forwarded: %s" % (gone, req["headers"]))
        self.assertNotIn("x-drop-me", connection_tokens(header_values(req, "connection")))

    def test_hop_by_hop_response_headers_removed(self):
        r = h.request(self.port, "GET", "/respheaders")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-kept"), "yes")
        self.assertIsNone(r.header("x-resp-drop"), "header named in the upstream's Connection: %r" % r.headers)
        self.assertIsNone(r.header("keep-alive"), "Keep-Alive is hop-by-hop: %r" % r.headers)
        self.assertNotIn("x-resp-drop", connection_tokens(r.headers_all("connection")))
        self.assertEqual(r.body, b"respheaders\n")

    def test_host_kept(self):
        r = h.request(self.port, "GET", "/host", host="Example.Test:8080")
        self.assertEqual(header_values(r.json(), "host"), ["Example.Test:8080"])

    def test_x_forwarded_for_added(self):
        r = h.request(self.port, "GET", "/xff")
        self.assertEqual(", ".join(header_values(r.json(), "x-forwarded-for")), "127.0.0.1")

    def test_x_forwarded_for_appended(self):
        r = h.request(self.port, "GET", "/xff", headers=[("X-Forwarded-For", "203.0.113.9")])
        self.assertEqual(", ".join(header_values(r.json(), "x-forwarded-for")), "203.0.113.9, 127.0.0.1")

    def test_x_forwarded_proto_set(self):
        r = h.request(self.port, "GET", "/xfp")
        self.assertEqual(header_values(r.json(), "x-forwarded-proto"), ["http"])
        r = h.request(self.port, "GET", "/xfp", headers=[("X-Forwarded-Proto", "https")])
        self.assertEqual(header_values(r.json(), "x-forwarded-proto"), ["http"],
                         "X-Forwarded-Proto is set, not appended to a client's value")

    def test_request_id_added_when_absent(self):
        ids = []
        for _ in range(2):
            r = h.request(self.port, "GET", "/rid")
            v = header_values(r.json(), "x-request-id")
            self.assertEqual(len(v), 1, r.json()["headers"])
            self.assertTrue(v[0].strip())
            ids.append(v[0])
        self.assertNotEqual(ids[0], ids[1], "request ids should be unique")

    def test_request_id_kept_when_present(self):
        r = h.request(self.port, "GET", "/rid", headers=[("X-Request-Id", "abc-123")])
        self.assertEqual(header_values(r.json(), "x-request-id"), ["abc-123"])

    def test_upgrade_h2c_removed(self):
        c = self.client()
        r = c.request("GET", "/h2c", headers=[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                                               ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")])
        self.assertEqual(r.status, 200, r)
        req = r.json()
        names = header_names(req)
        self.assertNotIn("upgrade", names, req["headers"])
        self.assertNotIn("http2-settings", names, req["headers"])
        self.assertNotIn("upgrade", connection_tokens(header_values(req, "connection")))
        # The connection stays HTTP/1.1: either usable for another request, or closed as announced.
        if "close" in connection_tokens(r.headers_all("connection")):
            self.assertTrue(c.is_closed(2))
        else:
            r = c.request("GET", "/after-h2c")
            self.assertEqual(r.status, 200)


class PathNormalisationTest(ProxyTest):
    CASES = [
        ("/public/../admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("//a///b", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/../../x", "/x"),
        ("/%7Euser/%41%42", "/~user/AB"),
        ("/a/b?x=1&y=/../z", "/a/b?x=1&y=/../z"),
        ("/p/./q/?k=v", "/p/q/?k=v"),
    ]

    def test_upstream_receives_normalised_path(self):
        c = self.client()
        for sent, expected in self.CASES:
            with self.subTest(target=sent):
                r = c.request("GET", sent)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["target"], expected)

    def test_encoded_slash_is_refused_by_default(self):
        # Decoding %2F would change the path, and servers differ on whether they do: refused
        # (test_security shows allow_ambiguous_paths forwarding it undecoded).
        r = h.request(self.port, "GET", "/a%2Fb")
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.header("x-pilotfish-error"), "ambiguous_path")


class DualStackTest(unittest.TestCase):
    def test_a_listener_on_the_ipv6_wildcard_takes_both_families(self):
        up = h.Upstream("echo")
        self.addCleanup(up.stop)
        pf = h.Pilotfish(h.simple_policy(up, listener={"address": "[::]:0"}))
        self.addCleanup(pf.kill)
        for host in ("127.0.0.1", "::1"):
            with h.Client(pf.port(), host=host) as c:
                r = c.request("GET", "/from/" + host)
                self.assertEqual(r.status, 200, (host, r))
        forwarded = [q for q in up.requests() if q["target"] == "/from/127.0.0.1"][0]
        # An IPv4 client is named as IPv4, not as ::ffff:127.0.0.1.
        self.assertIn(("x-forwarded-for", "127.0.0.1"), [(k.lower(), v) for k, v in forwarded["headers"]])
        pf.stop_and_check(self)


class NormalisedRoutingTest(unittest.TestCase):
    def setUp(self):
        self.admin = h.Upstream("echo", name="admin")
        self.addCleanup(self.admin.stop)
        self.public = h.Upstream("echo", name="public")
        self.addCleanup(self.public.stop)
        policy = h.simple_policy(self.public, routes=[
            {"match": {"path_prefix": "/admin"}, "cluster": "admin"},
            {"cluster": "app"}])
        policy["clusters"].append({"name": "admin", "endpoints": [self.admin.address]})
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.pf.kill)

    def tearDown(self):
        self.pf.stop_and_check(self)

    def test_dot_segments_cannot_slip_past_a_prefix_rule(self):
        for target in ("/admin/x", "/public/../admin", "/public/../admin/x", "/%61dmin", "//admin"):
            with self.subTest(target=target):
                r = h.request(self.pf.port(), "GET", target)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["name"], "admin", "%s should match path_prefix /admin" % target)
        r = h.request(self.pf.port(), "GET", "/public/x")
        self.assertEqual(r.json()["name"], "public")


class RoutingTest(unittest.TestCase):
    def setUp(self):
        self.ups = {}
        for name in ("api", "canary", "users", "posts"):
            u = h.Upstream("echo", name=name)
            self.addCleanup(u.stop)
            self.ups[name] = u
        policy = {
            "version": 1, "workers": 1, "access_log": "off", "admin": {"address": "127.0.0.1:0"},
            "listeners": [{
                "name": "ingress", "address": "127.0.0.1:0",
                "routes": [
                    {"match": {"host": "api.test"}, "cluster": "api"},
                    {"match": {"path_prefix": "/users/", "method": "GET", "headers": {"x-canary": "1"}},
                     "cluster": "canary"},
                    {"match": {"path_prefix": "/users/"}, "cluster": "users"},
                    {"match": {"method": "POST", "path_prefix": "/posts"}, "cluster": "posts"},
                ]}],
            "clusters": [{"name": n, "endpoints": [u.address]} for n, u in self.ups.items()],
        }
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.pf.kill)
        self.port = self.pf.port()

    def tearDown(self):
        self.pf.stop_and_check(self)

    def routed(self, method="GET", target="/", host="test.local", headers=None):
        r = h.request(self.port, method, target, headers=headers, host=host,
                      body=b"" if method == "POST" else None)
        self.assertEqual(r.status, 200, r)
        return r.json()["name"]

    def test_host_exact_case_insensitive_port_ignored(self):
        self.assertEqual(self.routed(host="api.test", target="/users/1"), "api")
        self.assertEqual(self.routed(host="API.Test", target="/x"), "api")
        self.assertEqual(self.routed(host="api.test:8443", target="/x"), "api")
        self.assertEqual(self.routed(host="Api.TEST:80", target="/x"), "api")

    def test_host_is_exact_not_suffix(self):
        r = h.request(self.port, "GET", "/x", host="www.api.test")
        self.assertEqual(r.status, 404, r)

    def test_path_method_and_header_match(self):
        self.assertEqual(self.routed("GET", "/users/7", headers=[("x-canary", "1")]), "canary")
        self.assertEqual(self.routed("GET", "/users/7", headers=[("X-Canary", "1")]), "canary")
        self.assertEqual(self.routed("POST", "/users/7", headers=[("x-canary", "1")]), "users")
        self.assertEqual(self.routed("GET", "/users/7", headers=[("x-canary", "2")]), "users")
        self.assertEqual(self.routed("GET", "/users/7"), "users")
        self.assertEqual(self.routed("POST", "/posts/1"), "posts")

    def test_no_route_404(self):
        c = h.Client(self.port)
        self.addCleanup(c.close)
        for method, target in (("GET", "/nothing"), ("GET", "/users"), ("GET", "/posts/1")):
            with self.subTest(target=target, method=method):
                r = c.request(method, target) if not c.eof else h.request(self.port, method, target)
                self.assertEqual(r.status, 404, r)
                self.assertEqual(r.header("x-pilotfish-error"), "no_route")
                self.assertEqual(len(r.body.strip().splitlines()), 1, "a one-line text body: %r" % r.body)
        for u in self.ups.values():
            self.assertEqual(u.stats()["requests"], [], "no upstream should see an unrouted request")


class LoadBalancingTest(unittest.TestCase):
    def setUp(self):
        self.u1 = h.Upstream("echo", name="u1")
        self.addCleanup(self.u1.stop)
        self.u2 = h.Upstream("echo", name="u2")
        self.addCleanup(self.u2.stop)
        self.pf = h.Pilotfish(h.simple_policy([self.u1, self.u2], cluster={"lb": "round_robin"}))
        self.addCleanup(self.pf.kill)

    def tearDown(self):
        self.pf.stop_and_check(self)

    def test_round_robin_alternates_on_one_connection(self):
        with h.Client(self.pf.port()) as c:
            names = [c.request("GET", "/rr/%d" % i).json()["name"] for i in range(8)]
        self.assertEqual(set(names), {"u1", "u2"}, names)
        for a, b in zip(names, names[1:]):
            self.assertNotEqual(a, b, "round_robin should alternate: %s" % names)

    def test_round_robin_alternates_across_connections(self):
        names = [h.request(self.pf.port(), "GET", "/rr/%d" % i).json()["name"] for i in range(6)]
        for a, b in zip(names, names[1:]):
            self.assertNotEqual(a, b, "round_robin should alternate: %s" % names)


class BodilessResponsesTest(ProxyTest):
    def test_head_has_no_body(self):
        c = self.client()
        g = c.request("GET", "/download?bytes=1234")
        self.assertEqual(len(g.body), 1234)
        r = c.request("HEAD", "/download?bytes=1234")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.header("content-length"), g.header("content-length"),
                         "HEAD keeps the Content-Length a GET would have")
        r2 = c.request("GET", "/after-head")
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.json()["target"], "/after-head")

    def test_head_to_chunked_resource(self):
        c = self.client()
        r = c.request("HEAD", "/chunked?n=3")
        self.assertEqual(r.status, 200, r)
        r2 = c.request("GET", "/after-head")
        self.assertEqual(r2.json()["target"], "/after-head")

    def test_204_and_304_have_no_body(self):
        c = self.client()
        for code in (204, 304, 204):
            r = c.request("GET", "/status/%d" % code)
            self.assertEqual(r.status, code, r)
            self.assertEqual(r.header("x-status"), str(code))
            self.assertIsNone(r.header("transfer-encoding"), "%d must not be chunked: %r" % (code, r.raw_head))
            r2 = c.request("GET", "/after-%d" % code)
            self.assertEqual(r2.status, 200, r2)
            self.assertEqual(r2.json()["target"], "/after-%d" % code)
        self.assertEqual(bytes(c.buf), b"")


class Http10Test(ProxyTest):
    def test_http10_without_keepalive_closes(self):
        c = self.client()
        c.send(h.build_request("GET", "/ten", version="HTTP/1.0", host=None))
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["target"], "/ten")
        self.assertTrue(c.is_closed(2), "HTTP/1.0 without keep-alive: the connection closes")

    def test_http10_keepalive(self):
        c = self.client()
        for i in range(3):
            c.send(h.build_request("GET", "/ten-ka/%d" % i, version="HTTP/1.0",
                                   headers=[("Connection", "keep-alive")]))
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["target"], "/ten-ka/%d" % i)
            self.assertIn("keep-alive", connection_tokens(r.headers_all("connection")),
                          "an HTTP/1.0 client needs `Connection: keep-alive` to keep the connection")
        self.assertFalse(c.is_closed(0.3))

    def test_http10_post_with_body(self):
        c = self.client()
        c.send(h.build_request("POST", "/ten-post", version="HTTP/1.0", body=b"0123456789"))
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body"], "0123456789")


class ExpectContinueTest(ProxyTest):
    def test_100_continue_relayed_before_body(self):
        c = self.client()
        body = b"hello world"
        c.send(h.build_request("POST", "/expect", headers=[("Expect", "100-continue"),
                                                            ("Content-Length", str(len(body)))]))
        interim = c.read_response(timeout=3, keep_interim=True)
        self.assertEqual(interim.status, 100, "expected `HTTP/1.1 100 Continue` before sending the body")
        c.send(body)
        r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body"], "hello world")
        self.assertTrue(r.json()["sent_100"], "the 100 should come from the upstream")
        r = c.request("GET", "/after-expect")
        self.assertEqual(r.status, 200)


class AccessLogTest(unittest.TestCase):
    FIELDS = ("time", "listener", "method", "authority", "path", "status", "duration", "upstream",
              "bytes_in", "bytes_out", "attempts", "error")

    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)
        self.dir = h.make_tmpdir()
        self.log = os.path.join(self.dir, "access.log")
        policy = h.simple_policy(self.up, access_log=self.log,
                                 routes=[{"match": {"path_prefix": "/ok"}, "cluster": "app"}])
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.pf.kill)

    def tearDown(self):
        self.pf.stop_and_check(self)

    def lines(self):
        try:
            with open(self.log) as f:
                return [json.loads(l) for l in f.read().splitlines() if l.strip()]
        except FileNotFoundError:
            return []

    def test_one_json_line_per_request(self):
        r = h.request(self.pf.port(), "POST", "/ok/log", body=b"12345", host="svc.test")
        self.assertEqual(r.status, 200)
        r404 = h.request(self.pf.port(), "GET", "/missing", host="svc.test")
        self.assertEqual(r404.status, 404)
        lines = h.wait_for(lambda: len(self.lines()) >= 2 and self.lines(), 5, what="2 access-log lines")
        self.assertEqual(len(lines), 2, lines)
        ok, missing = lines
        for line in lines:
            for field in self.FIELDS:
                self.assertIn(field, line, "access-log field %s missing: %s" % (field, line))
        self.assertEqual(ok["listener"], "ingress")
        self.assertEqual(ok["method"], "POST")
        self.assertEqual(ok["authority"], "svc.test")
        self.assertEqual(ok["path"], "/ok/log")
        self.assertEqual(ok["status"], 200)
        self.assertEqual(ok["upstream"], self.up.address)
        self.assertEqual(ok["attempts"], 1)
        self.assertGreaterEqual(ok["bytes_in"], 5)
        self.assertGreaterEqual(ok["bytes_out"], len(r.body))
        self.assertIsInstance(ok["duration"], (int, float))
        self.assertGreaterEqual(ok["duration"], 0)
        self.assertIn(ok["error"], (None, "", "-"))
        self.assertEqual(missing["status"], 404)
        self.assertEqual(missing["error"], "no_route")
        self.assertEqual(missing["path"], "/missing")
        self.assertIn(missing["attempts"], (0, None))
        st = os.stat(self.log)
        self.assertGreater(st.st_size, 0)

    def test_a_refused_request_logs_its_own_path_not_the_one_before_it(self):
        # Per-request state once outlived its request: a 400 that followed a good request on
        # the same connection was logged with the earlier request's path.
        with h.Client(self.pf.port()) as c:
            c.sock.sendall(b"GET /ok/first HTTP/1.1\r\nHost: svc.test\r\n\r\n")
            self.assertEqual(c.read_response().status, 200)
            c.sock.sendall(b"GET /second HTTP/1.1\r\nHost: bad host\r\n\r\n")
            self.assertEqual(c.read_response().status, 400)
        lines = h.wait_for(lambda: len(self.lines()) >= 2 and self.lines(), 5, what="2 access-log lines")
        self.assertEqual([(l["path"], l["status"], l["upstream"], l["attempts"]) for l in lines],
                         [("/ok/first", 200, self.up.address, 1), ("/second", 400, "", 0)])

    def test_what_a_client_sends_stays_strict_json(self):
        # An invalid Host is logged as it came (then answered 400): quotes, a backslash, a tab,
        # UTF-8 and a byte that is not UTF-8 must each come out as one JSON string that reads
        # back as the same text, the odd byte as \u00XX.
        hosts = [(b'a"b\\c', 'a"b\\c'), (b"caf\xc3\xa9 x", "caf\u00e9 x"), (b"x\xffy", "x\u00ffy"),
                 (b"t\tab", "t\tab")]
        for raw, _ in hosts:
            with h.Client(self.pf.port()) as c:
                c.sock.sendall(b"GET /ok/x HTTP/1.1\r\nHost: " + raw + b"\r\n\r\n")
                self.assertEqual(c.read_response().status, 400)

        def strict_lines():
            with open(self.log, "rb") as f:
                text = f.read().decode("utf-8")  # strict: a raw 0xff would fail here
            return [json.loads(l, parse_constant=lambda name: self.fail("not JSON: " + name))
                    for l in text.split("\n") if l]
        lines = h.wait_for(lambda: len(self.lines()) >= len(hosts) and strict_lines(), 5,
                           what="%d access-log lines" % len(hosts))
        self.assertEqual([l["authority"] for l in lines], [text for _, text in hosts])
        self.assertEqual({l["error"] for l in lines}, {"invalid_host"})


if __name__ == "__main__":
    h.main()
