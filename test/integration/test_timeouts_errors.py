#!/usr/bin/env python3
"""Timeouts (header, body, idle, connect, cluster timeout, upstream idle) and the error responses
pilotfish makes itself: 502 (reset, invalid response), 503 (connect failure), 504, 408, 413."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import upstream as up  # noqa: E402


class Base(unittest.TestCase):
    def start(self, upstreams, listener=None, cluster=None):
        self.pf = h.Pilotfish(h.simple_policy(upstreams, listener=listener, cluster=cluster))
        self.addCleanup(self.pf.kill)
        self.port = self.pf.port()
        return self.pf

    def upstream(self, mode="echo", **kw):
        u = h.Upstream(mode, **kw)
        self.addCleanup(u.stop)
        return u

    def tearDown(self):
        if getattr(self, "pf", None):
            self.pf.stop_and_check(self)

    def assert_error(self, r, status, reason=None):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.has_header("x-pilotfish-error"), "no x-pilotfish-error: %r" % r)
        if reason is not None:
            self.assertEqual(r.header("x-pilotfish-error"), reason)
        self.assertEqual(len(r.body.strip().splitlines()), 1, "a one-line text body: %r" % r.body)


class DownstreamTimeoutTest(Base):
    def setUp(self):
        self.up = self.upstream()
        self.start(self.up, listener={"header_timeout": "500ms", "body_timeout": "500ms",
                                      "idle_timeout": "400ms"})

    def test_header_timeout_for_a_trickling_client(self):
        head = b"GET /trickle HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
        c = h.Client(self.port)
        self.addCleanup(c.close)
        t0 = time.monotonic()
        got = False
        sent = 0
        for i in range(len(head) - 1):  # never the last byte: the head is never complete
            try:
                c.send(head[i:i + 1])
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                if c._fill(time.monotonic() + 0.05):
                    got = True
                    break
                break  # closed
            except h.Timeout:
                pass
            if time.monotonic() - t0 > 6:
                break
        elapsed = time.monotonic() - t0
        self.assertTrue(got or c.buf, "no response after trickling for %.1fs" % elapsed)
        r = c.read_response(timeout=3)
        self.assert_error(r, 408, "header_timeout")
        # Cut off while still trickling (it never finished sending its head): each byte did not
        # extend the timeout.
        self.assertLess(sent, len(head) - 1, "a trickle must not extend header_timeout")
        self.assertGreater(elapsed, 0.3, "not before header_timeout")
        self.assertTrue(c.is_closed(2))
        self.assertEqual(self.up.requests(), [])

    def test_header_timeout_for_a_stalled_head(self):
        c = h.Client(self.port)
        self.addCleanup(c.close)
        t0 = time.monotonic()
        c.send(b"GET /stalled HTTP/1.1\r\nHost: a\r\n")
        r = c.read_response(timeout=5)
        self.assert_error(r, 408, "header_timeout")
        self.assertGreater(time.monotonic() - t0, 0.3, "not before header_timeout")
        self.assertTrue(c.is_closed(2))
        self.assertEqual(self.up.requests(), [])

    def test_body_timeout_for_a_trickling_body(self):
        c = h.Client(self.port)
        self.addCleanup(c.close)
        t0 = time.monotonic()
        c.send(b"POST /slowbody HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        got = False
        sent = 10
        for _ in range(80):
            try:
                c.send(b"x")
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                c._fill(time.monotonic() + 0.1)
                got = True
                break
            except h.Timeout:
                pass
        elapsed = time.monotonic() - t0
        self.assertTrue(got or c.buf, "no response after trickling a body for %.1fs" % elapsed)
        r = c.read_response(timeout=3)
        self.assert_error(r, 408, "body_timeout")
        self.assertLess(sent, 1000, "cut off while still trickling: a trickle must not extend body_timeout")
        self.assertTrue(c.is_closed(2))

    def test_idle_timeout_closes_idle_keepalive_connection(self):
        c = h.Client(self.port)
        self.addCleanup(c.close)
        self.assertEqual(c.request("GET", "/idle").status, 200)
        t0 = time.monotonic()
        self.assertTrue(c.is_closed(3), "an idle keep-alive connection must be closed after idle_timeout")
        elapsed = time.monotonic() - t0
        self.assertGreater(elapsed, 0.25, "closed too early")

    def test_busy_connection_is_not_idle(self):
        c = h.Client(self.port)
        self.addCleanup(c.close)
        for i in range(6):  # 1.5s in all, each gap under idle_timeout
            self.assertEqual(c.request("GET", "/busy/%d" % i).status, 200)
            time.sleep(0.25)


class UpstreamTimeoutTest(Base):
    def test_cluster_timeout_504_for_hanging_upstream(self):
        u = self.upstream()
        self.start(u, cluster={"timeout": "500ms"})
        t0 = time.monotonic()
        r = h.request(self.port, "GET", "/hang", timeout=10)
        elapsed = time.monotonic() - t0
        self.assert_error(r, 504, "timeout")
        self.assertGreater(elapsed, 0.4, "not before the cluster timeout")

    def test_cluster_timeout_504_for_slow_upstream(self):
        u = self.upstream()
        self.start(u, cluster={"timeout": "500ms"})
        r = h.request(self.port, "GET", "/slow?ms=2000", timeout=10)
        self.assert_error(r, 504, "timeout")

    def test_slow_upstream_within_timeout(self):
        u = self.upstream()
        self.start(u, cluster={"timeout": "5s"})
        t0 = time.monotonic()
        r = h.request(self.port, "GET", "/slow?ms=800", timeout=10)
        self.assertEqual(r.status, 200, r)
        self.assertGreaterEqual(time.monotonic() - t0, 0.75)
        r = h.request(self.port, "GET", "/fast")
        self.assertEqual(r.status, 200, r)

    def test_connect_timeout_on_full_backlog(self):
        u = self.upstream("backlog")
        self.start(u, cluster={"connect_timeout": "200ms", "timeout": "10s"})
        # A 503, not the cluster timeout's 504 (10s): the connect timeout ended each attempt.
        r = h.request(self.port, "GET", "/ct", timeout=15)
        self.assertEqual(r.status, 503, r)
        self.assertIn(r.header("x-pilotfish-error"), ("connect_failure", "connect_timeout"), r)

    def test_upstream_idle_timeout_closes_pooled_connection(self):
        u = self.upstream()
        self.start(u, cluster={"idle_timeout": "300ms"})
        self.assertEqual(h.request(self.port, "GET", "/pooled").status, 200)
        self.assertEqual(u.stats()["open"], 1)
        h.wait_for(lambda: u.stats()["closed"] == 1, 3.0, what="the pooled connection to be closed")
        self.assertEqual(h.request(self.port, "GET", "/again").status, 200)
        self.assertEqual(u.stats()["connections"], 2)


class UpstreamErrorTest(Base):
    def test_dead_upstream_503_connect_failure(self):
        self.start("127.0.0.1:%d" % h.free_port())
        r = h.request(self.port, "GET", "/dead", timeout=10)
        self.assert_error(r, 503, "connect_failure")

    def test_retry_on_connect_failure_reaches_live_endpoint(self):
        u = self.upstream()
        self.start(["127.0.0.1:%d" % h.free_port(), u.address])
        for i in range(4):
            r = h.request(self.port, "GET", "/retry/%d" % i)
            self.assertEqual(r.status, 200, "default retry (1, on connect-failure) should reach the live endpoint")
        self.assertEqual(len(u.requests()), 4)

    def test_reset_after_head_502(self):
        u = self.upstream()
        self.start(u)
        r = h.request(self.port, "GET", "/reset", timeout=10)
        self.assert_error(r, 502)
        self.assertEqual(len(u.requests()), 1, "a reset is not retried by default")
        self.assertEqual(h.request(self.port, "GET", "/after-reset").status, 200)

    def test_reset_mode_upstream_502(self):
        u = self.upstream("reset")
        self.start(u)
        r = h.request(self.port, "POST", "/anything", body=b"abc", timeout=10)
        self.assert_error(r, 502)

    def test_hang_mode_upstream_504(self):
        u = self.upstream("hang")
        self.start(u, cluster={"timeout": "300ms"})
        r = h.request(self.port, "GET", "/anything", timeout=10)
        self.assert_error(r, 504, "timeout")

    def test_invalid_responses_502(self):
        u = self.upstream()
        # Every kind in a row would eject the one endpoint (outlier detection counts invalid
        # responses): this test is about the 502s.
        self.start(u, cluster={"outlier_detection": {"consecutive_failures": 1000}})
        for kind in sorted(up.INVALID_RESPONSES):
            if kind == "bad_chunk":
                continue
            with self.subTest(kind=kind):
                r = h.request(self.port, "GET", "/invalid?kind=" + kind, timeout=10)
                self.assert_error(r, 502, "invalid_response")
        self.assertEqual(h.request(self.port, "GET", "/after-invalid").status, 200)

    def test_invalid_mode_upstream_502(self):
        u = self.upstream("invalid")
        self.start(u)
        r = h.request(self.port, "GET", "/x", timeout=10)
        self.assert_error(r, 502, "invalid_response")

    def test_invalid_chunk_in_response_body_aborts(self):
        u = self.upstream()
        self.start(u)
        c = h.Client(self.port)
        self.addCleanup(c.close)
        c.send(h.build_request("GET", "/invalid?kind=bad_chunk"))
        data, closed = c.read_until_close(timeout=5)
        self.assertTrue(closed, "the client connection must be closed after an invalid upstream body")
        if data.startswith(b"HTTP/1.1 502"):
            return
        # The head was already relayed: the body must not be completed.
        try:
            responses = h.parse_responses(data)
        except (h.Closed, AssertionError, ValueError):
            return  # an incomplete response: the client can tell that it failed
        self.assertEqual([r for r in responses if r.status == 200], [],
                         "an invalid chunked body was relayed as a complete response")


class BodyLimitTest(Base):
    def setUp(self):
        self.up = self.upstream()
        self.start(self.up, listener={"max_body_bytes": 1000})

    def test_content_length_over_limit_413(self):
        c = h.Client(self.port)
        self.addCleanup(c.close)
        try:
            c.send(h.build_request("POST", "/big", body=b"x" * 2000))
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.read_response(timeout=5)
        self.assert_error(r, 413)
        self.assertEqual([q for q in self.up.requests() if q["target"] == "/big"], [],
                         "a body over max_body_bytes with a Content-Length is refused before the upstream")

    def test_chunked_over_limit_413(self):
        c = h.Client(self.port)
        self.addCleanup(c.close)
        try:
            c.send(h.build_request("POST", "/bigchunked", headers=[("Transfer-Encoding", "chunked")],
                                   body=h.chunk_encode([b"y" * 600, b"y" * 600, b"y" * 600])))
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.read_response(timeout=5)
        self.assert_error(r, 413)
        self.assertTrue(c.is_closed(2))
        for q in self.up.requests():
            self.assertLessEqual(q["body_len"], 1000, "the upstream got more than max_body_bytes")
            self.assertFalse(q["complete"] and q["target"] == "/bigchunked",
                             "the upstream got the whole over-limit request")

    def test_body_at_limit_accepted(self):
        r = h.request(self.port, "POST", "/fits", body=b"z" * 1000)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body_len"], 1000)


if __name__ == "__main__":
    h.main()
