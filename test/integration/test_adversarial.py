#!/usr/bin/env python3
"""Adversarial tests of the data path: regression tests for bugs found by attacking the real
binary, and a bounded fuzz of requests (garbled client bytes) and of responses (a misbehaving
upstream). Run it against the ASan+UBSan build to catch memory errors:

    PILOTFISH_BIN=build-asan/pilotfish python3 test/integration/test_adversarial.py [-k name]

Environment: PF_FUZZ_SEED (default 20251126; the seed is printed), PF_FUZZ_SECONDS (per fuzz
mode, default 15), PF_FUZZ_THREADS (concurrent fuzzing clients, default 3).

Every load loop here is bounded in count and in time; every upstream that is not upstream.py is
a thread of this process (RawUpstream), so nothing outlives the test file.
"""

import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

FUZZ_SEED = int(os.environ.get("PF_FUZZ_SEED", "20251126"))
FUZZ_SECONDS = float(os.environ.get("PF_FUZZ_SECONDS", "15"))
FUZZ_THREADS = int(os.environ.get("PF_FUZZ_THREADS", "3"))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

class RawUpstream:
    """A scripted upstream on a thread of this process: handler(sock, index, buf) per connection.
    `buf` is a bytearray the handler may use; what the handler reads through read_head() stays
    in it. Connections are closed when the handler returns."""

    def __init__(self, handler):
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(256)
        self.port = self.ls.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.handler = handler
        self.connections = 0
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                r, _, _ = select.select([self.ls], [], [], 0.1)
                if not r:
                    continue
                s, _ = self.ls.accept()
            except (OSError, ValueError):
                return
            with self.lock:
                idx = self.connections
                self.connections += 1
            threading.Thread(target=self._serve, args=(s, idx), daemon=True).start()

    def _serve(self, s, idx):
        try:
            s.settimeout(20)
            self.handler(s, idx, bytearray())
        except (OSError, EOFError):
            pass
        finally:
            try:
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        try:
            self.ls.close()
        except OSError:
            pass


def recv_until_eof(sock):
    """Everything the peer sends until it shuts down its side."""
    data = b""
    while True:
        d = sock.recv(65536)
        if not d:
            return data
        data += d


def read_head(s, buf):
    """Reads up to and including CRLF CRLF into buf; returns the head (removed from buf) or None."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            return None
        buf += d
    i = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:i])
    del buf[:i]
    return head


def fast_http(s, idx, buf):
    """Keep-alive upstream: answers every request head (bodies ignored) with 200 `ok <target>`."""
    while True:
        head = read_head(s, buf)
        if head is None:
            return
        target = head.split(b" ")[1]
        body = b"ok " + target + b"\n"
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def split_cl_responses(data):
    """[(status, body_length)] of back-to-back Content-Length responses; the tail that is not one,
    if any, as (None, its length). (harness.parse_responses pushes everything through a
    socketpair first, which blocks on megabytes.)"""
    out = []
    while data:
        i = data.find(b"\r\n\r\n")
        if i < 0:
            out.append((None, len(data)))
            break
        head = data[:i].decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        n = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                n = int(value)
        out.append((status, min(n, len(data) - i - 4)))
        data = data[i + 4 + n:]
    return out


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def sanitizer_report(pf):
    lines = [l for l in pf.lines if "Sanitizer" in l or "runtime error:" in l]
    return "\n".join(pf.lines[-150:]) if lines else ""


def tcp_queues():
    """{(local_port, remote_port): (tx_queue, rx_queue)} for 127.0.0.1 sockets, from /proc/net/tcp."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            lport = int(p[1].rsplit(":", 1)[1], 16)
            rport = int(p[2].rsplit(":", 1)[1], 16)
            tx, rx = (int(x, 16) for x in p[4].split(":"))
            out[(lport, rport)] = (tx, rx)
    return out


class Base(unittest.TestCase):
    def start_pf(self, policy):
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        return pf

    def stop_pf(self, pf, timeout=15.0):
        rc = pf.stop(timeout)
        report = sanitizer_report(pf)
        self.assertEqual(report, "", "sanitizer report:\n" + report)
        self.assertEqual(rc, 0, "exit code after SIGTERM:\n" + pf.log())

    def raw_upstream(self, handler):
        u = RawUpstream(handler)
        self.addCleanup(u.stop)
        return u

    def upstream(self, mode="echo"):
        u = h.Upstream(mode)
        self.addCleanup(u.stop)
        return u

    def client(self, port, timeout=5.0):
        c = h.Client(port, timeout=timeout)
        self.addCleanup(c.close)
        return c


# ---------------------------------------------------------------------------------------------
# Headers named in Connection: framing and Host must not be dropped
# ---------------------------------------------------------------------------------------------

class ConnectionNominatedHeadersTest(Base):
    """`Connection: content-length` makes pilotfish drop Content-Length from the request it sends
    upstream (is_hop_by_hop() honours every Connection token) while it still forwards the body:
    the upstream sees a body-less request followed by the body as a second request. That request
    never went through routing - a full request-smuggling bypass. In a response, the same drops
    the response's framing, and the client's connection desynchronises."""

    def test_connection_content_length_does_not_smuggle_a_request(self):
        up = self.upstream()
        pf = self.start_pf(h.simple_policy(up, routes=[{"match": {"path_prefix": "/public"}, "cluster": "app"}]))
        port = pf.port()
        smuggled = b"GET /admin/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        c = self.client(port)
        c.send(b"POST /public/x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: %d\r\n\r\n%s"
               % (len(smuggled), smuggled))
        try:
            r = c.read_response(timeout=3)
        except (h.Closed, h.Timeout) as e:
            r = e
        # A barrier request: once it is at the upstream, anything forwarded before it is too.
        self.assertEqual(h.request(port, "GET", "/public/barrier").status, 200)
        time.sleep(0.3)
        targets = [(q["method"], q["target"], q["body_len"]) for q in up.requests()]
        self.assertNotIn("/admin/smuggled", [t for _, t, _ in targets],
                         "a request hidden in a body reached the upstream, past routing: %r" % targets)
        if isinstance(r, h.Response) and r.status == 200:
            self.assertIn(("POST", "/public/x", len(smuggled)), targets,
                          "the upstream must receive the POST with its whole body: %r" % targets)
        st = up.stats()
        self.assertEqual(st["bytes_in"], st["bytes_parsed"], "the upstream got bytes outside any request")
        self.stop_pf(pf)

    def test_connection_host_keeps_the_routed_host(self):
        up = self.upstream()
        pf = self.start_pf(h.simple_policy(up, routes=[{"match": {"host": "good.example"}, "cluster": "app"}]))
        c = self.client(pf.port())
        c.send(b"GET /h HTTP/1.1\r\nHost: good.example\r\nConnection: host\r\n\r\n")
        r = c.read_response(timeout=3)
        if r.status == 200:
            hosts = [v for n, v in r.json()["headers"] if n.lower() == "host"]
            self.assertEqual(hosts, ["good.example"],
                             "the request was routed by Host good.example; the upstream must see that Host")
        else:
            self.assertEqual(r.status, 400, r)
        self.stop_pf(pf)

    def test_response_connection_content_length_keeps_framing(self):
        def handler(s, idx, buf):
            while read_head(s, buf) is not None:
                s.sendall(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello")
        up = self.raw_upstream(handler)
        pf = self.start_pf(h.simple_policy(up.address))
        c = self.client(pf.port())
        try:
            r1 = c.request("GET", "/one", timeout=3)
        except h.Timeout:
            self.fail("the response lost its framing: the client cannot tell where it ends")
        self.assertEqual(r1.body, b"hello")
        r2 = c.request("GET", "/two", timeout=3)
        self.assertEqual((r2.status, r2.body), (200, b"hello"))
        self.stop_pf(pf)


# ---------------------------------------------------------------------------------------------
# Close-delimited responses
# ---------------------------------------------------------------------------------------------

class CloseDelimitedResponseTest(Base):
    """A response without Content-Length or chunked ends when the upstream closes. on_upstream_end
    calls llhttp_finish() and expects HPE_OK, but on_response_message_complete returns HPE_PAUSED,
    which llhttp_finish passes back: the complete response is treated as an upstream reset, the
    session closes at once, the terminating 0-chunk (and whatever is still queued) is dropped."""

    def run_case(self, response, version):
        def handler(s, idx, buf):
            if read_head(s, buf) is None:
                return
            s.sendall(response)
            time.sleep(0.1)
        up = self.raw_upstream(handler)
        pf = self.start_pf(h.simple_policy(up.address))
        c = self.client(pf.port())
        c.send(b"GET /cd HTTP/%s\r\nHost: a\r\n\r\n" % version)
        try:
            r = c.read_response(timeout=3)
        except h.Closed as e:
            self.fail("close-delimited response (client HTTP/%s) cut short: %s" % (version.decode(), e))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"hello, close-delimited world")
        self.stop_pf(pf)

    def test_http11_upstream_close_delimited_to_http11_client(self):
        self.run_case(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello, close-delimited world", b"1.1")

    def test_http10_upstream_close_delimited_to_http11_client(self):
        self.run_case(b"HTTP/1.0 200 OK\r\n\r\nhello, close-delimited world", b"1.1")


class InterimResponseBodyTest(Base):
    """An interim (1xx) response ends at its blank line whatever its fields say (RFC 9112 6.3).
    llhttp would read a body after a 100 with Content-Length, and pilotfish passed that body on
    after the 100's head, unframed: an upstream could put a whole response there, which the
    client took for the answer, and the real answer then answered its next request (found by the
    session fuzz target)."""

    def test_a_1xx_with_content_length_carries_no_body(self):
        inner = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"

        def handler(s, idx, buf):
            while read_head(s, buf) is not None:
                s.sendall(b"HTTP/1.1 100 Continue\r\nContent-Length: %d\r\n\r\n%s" % (len(inner), inner) +
                          b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
        up = self.raw_upstream(handler)
        pf = self.start_pf(h.simple_policy(up.address))
        c = socket.create_connection(("127.0.0.1", pf.port()), timeout=5)
        self.addCleanup(c.close)
        c.sendall(b"GET /interim HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        responses = split_cl_responses(recv_until_eof(c))
        finals = [r for r in responses if r[0] is None or r[0] >= 200]
        # The bytes after the 100's blank line are the next response: the one final answer.
        self.assertEqual(responses[0], (100, 0), responses)
        self.assertEqual(len(finals), 1, "one request, one final response: %r" % responses)
        self.stop_pf(pf)


# ---------------------------------------------------------------------------------------------
# Pipelining
# ---------------------------------------------------------------------------------------------

class PipeliningTest(Base):
    def test_pipelined_burst_over_64k_with_last_request_split(self):
        """on_data stops reading once leftover_ is over 64 KiB; finish_request() re-parses the
        leftover and returns early when a request is in progress (`if (closing() || in_request_)
        return;`) without start_read(): when the leftover ends inside a request head, the rest of
        that head is never read. The last request hangs until header_timeout (408)."""
        up = self.raw_upstream(fast_http)
        pf = self.start_pf(h.simple_policy(up.address, listener={"header_timeout": "30s"}))
        n = 3000
        reqs = b"".join(b"GET /p/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(n))
        c = self.client(pf.port(), timeout=10)
        c.send(reqs[:-10])
        time.sleep(0.3)
        c.send(reqs[-10:])
        got = 0
        try:
            while got < n:
                r = c.read_response(timeout=5)
                self.assertEqual(r.body, b"ok /p/%d\n" % got)
                got += 1
        except h.Timeout:
            pass
        self.assertEqual(got, n, "pipelined requests answered")
        self.stop_pf(pf)

    def test_half_close_after_pipelined_requests(self):
        """A client that pipelines requests and then shuts down its sending side (as `printf ... |
        nc` does) gets only the first answer: on_read_end() sets keep_alive_ = false when the EOF
        arrives behind a paused request, so the requests already received in leftover_ are
        silently dropped."""
        up = self.raw_upstream(fast_http)
        pf = self.start_pf(h.simple_policy(up.address))
        c = self.client(pf.port())
        c.send(b"".join(b"GET /hc/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3)))
        c.shutdown_write()
        data, closed = c.read_until_close(5)
        self.assertTrue(closed)
        bodies = [r.body for r in h.parse_responses(data)]
        self.assertEqual(bodies, [b"ok /hc/0\n", b"ok /hc/1\n", b"ok /hc/2\n"])
        self.stop_pf(pf)

    def test_pipelined_local_responses_do_not_copy_quadratically(self):
        """A burst of pipelined requests answered locally (404 here) is handled by recursion:
        finish_request -> parse_input -> after_downstream_io -> maybe_finish_request ->
        finish_request..., each level holding a copy of the remaining input. 4000 tiny requests
        (108 KB) take ~78 MB (release build) at peak; 128 KB queued behind a slow request ~330 MB."""
        up = self.raw_upstream(fast_http)
        pf = self.start_pf(h.simple_policy(up.address, routes=[{"match": {"path_prefix": "/api"}, "cluster": "app"}]))
        time.sleep(0.2)
        hwm0 = pf.rss_kib("VmHWM")
        n = 4000
        c = self.client(pf.port(), timeout=10)
        c.send(b"GET /x HTTP/1.1\r\nHost:a\r\n\r\n" * n)
        for _ in range(n):
            self.assertEqual(c.read_response(timeout=10).status, 404)
        grown = pf.rss_kib("VmHWM") - hwm0
        self.assertLess(grown, 24 * 1024, "peak memory grew by %d KiB for a 108 KB pipelined burst" % grown)
        self.stop_pf(pf)

    def test_client_that_never_reads_is_bounded(self):
        """Backpressure is applied only while an upstream response streams. Between requests,
        finish_request() parses the next one whatever the downstream write queue holds, so a
        client that pipelines requests and never reads grows pilotfish's memory without bound
        (local 404 answers: ~500 B per request in a release build, 300k requests -> +150 MB)."""
        up = self.raw_upstream(fast_http)
        pf = self.start_pf(h.simple_policy(up.address, routes=[{"match": {"path_prefix": "/api"}, "cluster": "app"}]))
        time.sleep(0.2)
        rss0 = pf.rss_kib()
        s = socket.create_connection(("127.0.0.1", pf.port()))
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(2)
        batch = b"GET /nothing-here HTTP/1.1\r\nHost: a\r\n\r\n" * 20
        sent, t0 = 0, time.monotonic()
        try:
            while sent < 150000 and time.monotonic() - t0 < 15:
                s.sendall(batch)
                sent += 20
        except (socket.timeout, OSError):
            pass  # pilotfish stopped reading: that is the expected backpressure
        time.sleep(0.5)
        grown = pf.rss_kib() - rss0
        s.close()
        self.assertLess(grown, 32 * 1024, "RSS grew by %d KiB for %d pipelined requests never read" % (grown, sent))
        self.stop_pf(pf)

    def test_client_that_never_reads_is_closed_after_idle_timeout(self):
        """Once the answers queued for a client pass the high-water mark, continue_pipeline()
        sets waiting_for_client_ and stops - with no timer armed (finish_request() disarms it,
        and the idle timer is only armed when !waiting_for_client_). A client that pipelines
        and never reads then holds its connection, and 256 KiB+ of queued answers, forever
        (idle_timeout 1 s: still open after 15 s)."""
        up = self.raw_upstream(fast_http)
        # The client's last send may stop inside a request head (sendall timed out), and once every
        # answer is in the kernel's buffers pilotfish waits for the rest of that head: so
        # header_timeout is short too, and its 408, never read either, is bounded by idle_timeout.
        pf = self.start_pf(h.simple_policy(up.address, listener={"idle_timeout": "1s", "header_timeout": "2s"},
                                           routes=[{"match": {"path_prefix": "/api"}, "cluster": "app"}]))
        time.sleep(0.2)
        fd0 = fd_count(pf.pid)
        s = socket.create_connection(("127.0.0.1", pf.port()))
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(2)
        batch = b"GET /nothing-here HTTP/1.1\r\nHost: a\r\n\r\n" * 20
        t0 = time.monotonic()
        try:
            for _ in range(5000):  # 100000 requests: far more answers than the kernel buffers hold
                if time.monotonic() - t0 > 15:
                    break
                s.sendall(batch)
        except (socket.timeout, OSError):
            pass
        try:
            h.wait_for(lambda: fd_count(pf.pid) <= fd0, 8.0, what="the connection of a client that never reads closed")
        except AssertionError:
            self.fail("a client that has not read for 8 s (idle_timeout 1 s) still holds its connection")
        s.close()
        self.stop_pf(pf)

    def test_half_close_after_many_pipelined_requests(self):
        """The half-close fix covers an EOF that arrives while a request is in flight
        (`parser_paused_ && in_request_`). When it arrives while the pipeline is held back
        (answers over the high-water mark: waiting_for_client_, or more than 64 KiB unparsed),
        on_read_end() closes - or continue_pipeline()'s client_eof_ branch calls
        close_after_flush() with requests still in leftover_ - and the rest is never answered
        (seen: 57707 of 60000)."""
        up = self.raw_upstream(fast_http)
        pf = self.start_pf(h.simple_policy(up.address, routes=[{"match": {"path_prefix": "/api"}, "cluster": "app"}]))
        n = 60000
        c = self.client(pf.port(), timeout=30)
        c.send(b"GET /nothing-here HTTP/1.1\r\nHost: a\r\n\r\n" * n)
        c.shutdown_write()
        time.sleep(1.0)
        data, closed = c.read_until_close(20)
        self.assertTrue(closed)
        self.assertEqual(data.count(b"HTTP/1.1 404 "), n, "answers to pipelined requests sent before a half-close")
        self.stop_pf(pf)


# ---------------------------------------------------------------------------------------------
# A response still in the downstream write queue
# ---------------------------------------------------------------------------------------------

class QueuedResponseTest(Base):
    """States where a response is complete from the upstream's side but part of it still waits in
    pilotfish's write queue for a slow client. To get there, the response size is the kernel's
    buffering (measured first, through /proc/net/tcp) plus less than the 256 KiB high-water mark;
    a test whose state could not be reached is skipped, never failed."""

    RCVBUF = 65536

    def big_upstream(self):
        def handler(s, idx, buf):
            while True:
                head = read_head(s, buf)
                if head is None:
                    return
                n = int(head.split(b" ")[1].split(b"=")[1])
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                block = b"z" * 65536
                left = n
                while left > 0:
                    s.sendall(block[:min(left, len(block))])
                    left -= min(left, len(block))
        return self.raw_upstream(handler)

    def slow_client(self, port, size, extra=b""):
        c = self.client(port, timeout=15)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RCVBUF)
        c.send(b"GET /big?n=%d HTTP/1.1\r\nHost: a\r\n%s\r\n" % (size, extra))
        return c

    def kernel_buffering(self, up, policy):
        """Bytes the kernel holds between pilotfish and a client that does not read."""
        pf = self.start_pf(policy)
        port = pf.port()
        c = self.slow_client(port, 32 * 1024 * 1024)
        time.sleep(1.5)
        cport = c.sock.getsockname()[1]
        q = tcp_queues()
        k = q.get((port, cport), (0, 0))[0] + q.get((cport, port), (0, 0))[1]
        c.close()
        self.stop_pf(pf)
        return k

    def queued_state(self, port, up_port, c, size):
        """True when pilotfish read all of the response but the kernel holds less than all of it."""
        cport = c.sock.getsockname()[1]
        q = tcp_queues()
        upstream_unread = sum(rx for (l, r), (tx, rx) in q.items() if r == up_port) + \
            sum(tx for (l, r), (tx, rx) in q.items() if l == up_port)
        in_kernel = q.get((port, cport), (0, 0))[0] + q.get((cport, port), (0, 0))[1]
        return upstream_unread == 0 and in_kernel < size

    def test_drain_does_not_truncate_a_queued_response(self):
        """HttpSession::drain() closes every session that is not in a request - also one whose
        response is complete but still queued for a slow client: close() cancels the queued
        writes and the client gets a truncated body (seen: 4195284 of 4200000 bytes)."""
        up = self.big_upstream()
        policy = h.simple_policy(up.address, cluster={"timeout": "30s"})
        k = self.kernel_buffering(up, policy)
        for extra in (96 * 1024, 160 * 1024, 64 * 1024, 200 * 1024):
            size = k + extra
            pf = self.start_pf(policy)
            port = pf.port()
            c = self.slow_client(port, size)
            time.sleep(1.5)
            reached = self.queued_state(port, up.port, c, size)
            pf.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            try:
                r = c.read_response(timeout=15)
                body = len(r.body)
            except h.Closed:
                body = len(c.buf) - c.buf.find(b"\r\n\r\n") - 4
            self.stop_pf(pf)
            c.close()
            if reached:
                self.assertEqual(body, size, "SIGTERM cut a response that was still being written")
                return
        self.skipTest("could not reach a complete-but-queued response (kernel buffering %d)" % k)

    def test_no_stray_504_after_a_complete_response(self):
        """finish_request() on a connection that closes (Connection: close, HTTP/1.0) leaves the
        cluster timer armed; reset_request() has cleared the state, so when it fires while the
        response is still being written, on_timeout() takes it for a request without a response
        and appends `HTTP/1.1 504 Gateway Timeout` after the complete 200 response."""
        up = self.big_upstream()
        policy = h.simple_policy(up.address, cluster={"timeout": "1s"})
        k = self.kernel_buffering(up, policy)
        for extra in (96 * 1024, 160 * 1024, 64 * 1024, 200 * 1024):
            size = k + extra
            pf = self.start_pf(policy)
            port = pf.port()
            c = self.slow_client(port, size, b"Connection: close\r\n")
            time.sleep(1.0)
            reached = self.queued_state(port, up.port, c, size)
            time.sleep(2.0)  # past the cluster timeout
            data, closed = c.read_until_close(15)
            self.stop_pf(pf)
            c.close()
            if reached:
                self.assertEqual(split_cl_responses(data), [(200, size)],
                                 "exactly the one complete response expected after a slow read")
                return
        self.skipTest("could not reach a complete-but-queued response (kernel buffering %d)" % k)

    def test_slow_reader_is_not_cut_as_upstream_stall(self):
        """After the response head, Timer::upstream checks for progress from the upstream; but
        pilotfish stops reading the upstream itself while the client is slow (backpressure), and
        that pause counts as an upstream stall: a client that stops reading for longer than the
        cluster timeout loses its download (closed, error upstream_stalled)."""
        up = self.upstream()
        pf = self.start_pf(h.simple_policy(up, cluster={"timeout": "2s"}))
        n = 12 * 1024 * 1024
        c = self.client(pf.port(), timeout=15)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RCVBUF)
        c.send(b"GET /download?bytes=%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
        got = 0
        while got < 1024 * 1024:
            d = c.sock.recv(65536)
            if not d:
                break
            got += len(d)
        time.sleep(3.0)  # the client pauses; the upstream is fine
        total = got
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            d = c.sock.recv(1 << 20)
            if not d:
                break
            total += len(d)
            if total >= n:
                break
        self.assertGreaterEqual(total, n, "download cut short after a 3 s pause of the client")
        self.stop_pf(pf)


# ---------------------------------------------------------------------------------------------
# Upstream misbehaviour
# ---------------------------------------------------------------------------------------------

class UpstreamMisbehaviourTest(Base):
    def test_endless_status_line_is_bounded(self):
        """on_response_status appends to resp_status_text_ without a limit (header fields are
        capped at 64 KiB, the status line is not): one upstream response grew a release build to
        2 GB of RSS in 5 s."""
        limit = 100 * 1024 * 1024
        sent = [0]

        def handler(s, idx, buf):
            if read_head(s, buf) is None:
                return
            s.sendall(b"HTTP/1.1 200 ")
            block = b"A" * 65536
            t0 = time.monotonic()
            while sent[0] < limit and time.monotonic() - t0 < 4:
                s.sendall(block)
                sent[0] += len(block)
        up = self.raw_upstream(handler)
        pf = self.start_pf(h.simple_policy(up.address, cluster={"timeout": "5s"}))
        rss0 = pf.rss_kib()
        c = self.client(pf.port(), timeout=10)
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        r = c.read_response(timeout=10)
        self.assertIn(r.status, (502, 504), r)
        grown = pf.rss_kib("VmHWM") - rss0
        self.assertLess(grown, 48 * 1024, "RSS grew by %d KiB while the upstream sent %d MiB of status line"
                        % (grown, sent[0] >> 20))
        self.stop_pf(pf)

    def test_upstream_misbehaviour_keeps_pilotfish_healthy(self):
        """A battery of broken upstream answers; pilotfish must answer each with a response or a
        close, keep serving, and leave no descriptor behind."""
        cases = [
            b"HTTP/1.1 100 Continue\r\n\r\n" * 2000 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nraw",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX: y\n\r\n",
        ]
        state = {"i": 0}

        def handler(s, idx, buf):
            while read_head(s, buf) is not None:
                s.sendall(cases[state["i"]])
                time.sleep(0.05)
                return
        up = self.raw_upstream(handler)
        good = self.raw_upstream(fast_http)
        policy = h.simple_policy(up.address)
        policy["clusters"].append({"name": "good", "endpoints": [good.address]})
        policy["listeners"][0]["routes"] = [{"match": {"path_prefix": "/good"}, "cluster": "good"},
                                           {"cluster": "app"}]
        pf = self.start_pf(policy)
        port = pf.port()
        time.sleep(0.2)
        fd0 = fd_count(pf.pid)
        for i in range(len(cases)):
            state["i"] = i
            c = h.Client(port, timeout=5)
            try:
                c.send(b"POST /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
                c.read_until_close(1.0)
            finally:
                c.close()
            self.assertTrue(pf.alive(), "pilotfish died on case %d" % i)
            self.assertEqual(h.request(port, "GET", "/good/%d" % i).status, 200)
        h.wait_for(lambda: fd_count(pf.pid) <= fd0 + 1, 8.0, what="descriptors back to %d" % fd0)
        self.stop_pf(pf)


# ---------------------------------------------------------------------------------------------
# protocol: tcp half-close
# ---------------------------------------------------------------------------------------------

class TcpHalfCloseTest(Base):
    """TcpProxySession passes a FIN on with shutdown_after_flush(); when the other direction ends
    too, maybe_close() calls close_after_flush() on both streams - but a stream whose shutdown has
    already been done never gets to close: maybe_finish_flush() returns at `shutdown_started_`,
    and shutdown_cb() has already run with close_after_flush_ false. One descriptor per connection
    leaks: the upstream one forever (no timer), the client one for the 1 h idle timer, and a
    SIGTERM then waits the whole drain_timeout."""

    def start_tcp(self, handler):
        up = self.raw_upstream(handler)
        policy = {"version": 1, "workers": 1, "access_log": "off", "admin": {"address": "127.0.0.1:0"},
                  "listeners": [{"name": "db", "address": "127.0.0.1:0", "protocol": "tcp",
                                 "routes": [{"cluster": "echo"}]}],
                  "clusters": [{"name": "echo", "endpoints": [up.address]}]}
        pf = self.start_pf(policy)
        return pf, pf.port("db")

    def check_no_leak(self, pf, fd0):
        try:
            h.wait_for(lambda: fd_count(pf.pid) <= fd0 + 1, 5.0, what="descriptors back to %d" % fd0)
        except AssertionError:
            self.fail("descriptors: %d before, %d after 10 half-closed tcp connections" % (fd0, fd_count(pf.pid)))
        self.stop_pf(pf, 40)
        self.assertNotIn("drain timeout passed", pf.log(last=1 << 30),
                         "SIGTERM waited for connections that had ended")

    def test_client_closes_first(self):
        def echo_then_close(s, idx, buf):
            while True:
                d = s.recv(65536)
                if not d:
                    break
                s.sendall(d)
            s.sendall(b"bye\n")
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        pf, port = self.start_tcp(echo_then_close)
        time.sleep(0.2)
        fd0 = fd_count(pf.pid)
        for i in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"hello")
                s.shutdown(socket.SHUT_WR)
                data = recv_until_eof(s)
                self.assertEqual(data, b"hellobye\n")
        self.check_no_leak(pf, fd0)

    def test_upstream_closes_first(self):
        def banner(s, idx, buf):
            s.sendall(b"banner\n")
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        pf, port = self.start_tcp(banner)
        time.sleep(0.2)
        fd0 = fd_count(pf.pid)
        for i in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                data = recv_until_eof(s)
                self.assertEqual(data, b"banner\n")
                s.shutdown(socket.SHUT_WR)
                time.sleep(0.05)
        self.check_no_leak(pf, fd0)


# ---------------------------------------------------------------------------------------------
# Bounded fuzz
# ---------------------------------------------------------------------------------------------

REQUEST_CORPUS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p/q?x=1 HTTP/1.1\r\nHost: example.com:80\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n"
    b"X-Trailer: t\r\n\r\n",
    b"PUT /expect HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    b"GET /old HTTP/1.0\r\n\r\n",
    b"GET /old-ka HTTP/1.0\r\nConnection: keep-alive\r\nHost: a\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET /h2c HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"DELETE /a/../b/./c//d HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-foo\r\nX-Foo: 1\r\n"
    b"X-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"GET /close HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n" + b"B" * 3000,
    b"GET /%61%2e%2E/x HTTP/1.1\r\nHost: [::1]:8080\r\nX-Request-Id: abc\r\n\r\n",
    b"GET /nope/dead HTTP/1.1\r\nHost: a\r\n\r\n",
]

RESPONSE_CORPUS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclose-delimited body",
    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\nnot found",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw",
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"D" * 2000,
]

INTERESTING = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b";", b"\x7f", b"\xff", b"0", b"9",
               b"f", b"-", b"\r\n\r\n", b"\r\n ", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 7\r\n",
               b"Connection: close\r\n", b"Host: b\r\n", b"0\r\n\r\n", b"ffffffff\r\n", b"Expect: 100-continue\r\n",
               b"Connection: content-length\r\n", b"Connection: transfer-encoding\r\n", b"Connection: host\r\n"]

# Whole header lines, inserted at a line boundary (so that they parse as headers).
HEADER_LINES = [b"Connection: content-length\r\n", b"Connection: transfer-encoding\r\n", b"Connection: close\r\n",
                b"Connection: host, x-request-id\r\n", b"Content-Length: 0\r\n", b"Content-Length: 3\r\n",
                b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n", b"Upgrade: websocket\r\n",
                b"Connection: upgrade\r\n", b"Host: other\r\n", b"X-Forwarded-For: 10.0.0.1\r\n",
                b"Trailer: x\r\n", b"TE: trailers\r\n", b"Keep-Alive: timeout=1\r\n"]


def mutate(rng, data, corpus):
    """Bit flips, inserted tokens, deletions, truncation, duplication, splices, number swaps."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(11)
        if not data:
            data = bytearray(rng.choice(corpus))
        i = rng.randrange(len(data) + 1)
        if op == 0:
            j = rng.randrange(len(data))
            data[j] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[i:i] = rng.choice(INTERESTING)
        elif op == 2:
            del data[i:i + rng.randint(1, 8)]
        elif op == 3:
            del data[i:]
        elif op == 4:
            j = rng.randrange(len(data))
            data[i:i] = data[j:j + rng.randint(1, 32)]
        elif op == 5:
            other = rng.choice(corpus)
            data = data[:i] + bytearray(other[rng.randrange(len(other) + 1):])
        elif op == 6:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 7:
            digits = [k for k, c in enumerate(data) if 48 <= c <= 57]
            if digits:
                k = rng.choice(digits)
                data[k:k + 1] = str(rng.choice([0, 1, 2, 9, 10, 99, 4096, 65536, 2 ** 31, 2 ** 63, 2 ** 64 + 1])).encode()
        elif op == 8:
            data += rng.choice(corpus)
        else:  # a whole header line after one of the first lines
            ends = [k + 2 for k in range(min(len(data), 400) - 1) if data[k:k + 2] == b"\r\n"][:8]
            if ends:
                k = rng.choice(ends)
                data[k:k] = rng.choice(HEADER_LINES)
    return bytes(data)


def send_split(rng, sock, data, deadline):
    """Writes data in random pieces with small random pauses; False when the peer is gone."""
    pos = 0
    while pos < len(data) and time.monotonic() < deadline:
        n = rng.choice([1, 2, 3, 7, 16, 64, 512, len(data)])
        try:
            sock.sendall(data[pos:pos + n])
        except OSError:
            return False
        pos += n
        if rng.random() < 0.15:
            time.sleep(rng.choice([0.001, 0.005, 0.02]))
    return True


def read_for(sock, until):
    got = 0
    while time.monotonic() < until:
        r, _, _ = select.select([sock], [], [], max(0.0, until - time.monotonic()))
        if not r:
            break
        try:
            d = sock.recv(65536)
        except OSError:
            break
        if not d:
            break
        got += len(d)
    return got


def close_randomly(rng, sock):
    k = rng.random()
    try:
        if k < 0.2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        elif k < 0.4:
            sock.shutdown(socket.SHUT_WR)
            read_for(sock, time.monotonic() + 0.05)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


TOKEN = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# The methods llhttp knows: pilotfish can only ever forward one of these.
METHODS = set(b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH "
              b"UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE "
              b"UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split())


class StrictUpstream(RawUpstream):
    """Parses every request strictly (what pilotfish forwards must be clean HTTP/1.1 with one
    Host and unambiguous framing) and records each violation; answers 200, tunnels /ws upgrades."""

    def __init__(self):
        self.violations = []
        self.requests = 0
        super().__init__(self._handle)

    def _violation(self, what, buf, previous):
        with self.lock:
            if len(self.violations) < 20:
                self.violations.append("%s; bytes %r; the request before on this connection: %r"
                                       % (what, bytes(buf[:120]), previous))

    def _handle(self, s, idx, buf):
        s.settimeout(10)

        def fill():
            d = s.recv(65536)
            if not d:
                raise EOFError
            buf.extend(d)

        def line():
            while b"\r\n" not in buf:
                if b"\n" in buf or b"\r" in buf[:-1]:
                    raise ValueError("bare CR or LF")
                fill()
            i = buf.index(b"\r\n")
            ln = bytes(buf[:i])
            del buf[:i + 2]
            if b"\n" in ln or b"\r" in ln:
                raise ValueError("bare CR or LF in %r" % ln)
            return ln

        def exact(n):
            while len(buf) < n:
                fill()
            d = bytes(buf[:n])
            del buf[:n]
            return d
        previous = None
        try:
            while True:
                try:
                    rl = line()
                except EOFError:
                    if buf:
                        self._violation("truncated request", buf, previous)
                    return
                parts = rl.split(b" ")
                if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1] or parts[0] not in METHODS:
                    raise ValueError("bad request line %r" % rl)
                method, target = parts[0], parts[1]
                headers = []
                while True:
                    ln = line()
                    if not ln:
                        break
                    name, sep, value = ln.partition(b":")
                    if not sep or not name or not all(c in TOKEN for c in name):
                        raise ValueError("bad header line %r" % ln)
                    v = value.strip(b" \t")
                    if any((c < 0x20 and c != 9) or c == 0x7f for c in v):
                        raise ValueError("control character in %r" % ln)
                    headers.append((name.lower(), v))
                names = [n for n, _ in headers]
                if names.count(b"host") != 1:
                    raise ValueError("%d Host headers" % names.count(b"host"))
                te = [v for n, v in headers if n == b"transfer-encoding"]
                cl = [v for n, v in headers if n == b"content-length"]
                if (te and cl) or len(te) > 1 or len(cl) > 1:
                    raise ValueError("ambiguous framing TE %r CL %r" % (te, cl))
                if te and te[0].lower() != b"chunked":
                    raise ValueError("Transfer-Encoding %r" % te)
                if cl and not cl[0].isdigit():
                    raise ValueError("Content-Length %r" % cl)
                if te:
                    while True:
                        size = int(line().split(b";")[0], 16)
                        if size == 0:
                            while line():
                                pass
                            break
                        exact(size)
                        if exact(2) != b"\r\n":
                            raise ValueError("chunk data not followed by CRLF")
                elif cl:
                    exact(int(cl[0]))
                with self.lock:
                    self.requests += 1
                previous = (rl, headers)
                conn = b",".join(v for n, v in headers if n == b"connection").lower()
                if target.startswith(b"/ws") and b"upgrade" in conn and b"upgrade" in names:
                    s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    while True:
                        if buf:
                            s.sendall(bytes(buf))
                            buf.clear()
                        fill()
                body = b"ok " + target[:100] + b"\n"
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), b"" if method == b"HEAD" else body))
        except (EOFError, OSError):
            return
        except ValueError as e:
            self._violation(str(e), buf, previous)


class MutatingUpstream(RawUpstream):
    """Answers each request head with a (usually mutated) response from RESPONSE_CORPUS, written
    in random pieces; sometimes closes or resets right after."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        super().__init__(self._handle)

    def _handle(self, s, idx, buf):
        with self.rng_lock:
            rng = random.Random(self.rng.randrange(1 << 30))
        s.settimeout(5)
        while read_head(s, buf) is not None:
            resp = rng.choice(RESPONSE_CORPUS)
            if rng.random() < 0.7:
                resp = mutate(rng, resp, RESPONSE_CORPUS)
            if not send_split(rng, s, resp, time.monotonic() + 2):
                return
            k = rng.random()
            if k < 0.2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if k < 0.4:
                return
            buf.clear()  # request bodies are not parsed here


def fuzz_policy(main_address, good_address):
    return {
        "version": 1, "service": "fuzz", "workers": 1, "access_log": "off",
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [{"name": "ingress", "address": "127.0.0.1:0", "header_timeout": "1s",
                       "body_timeout": "1s", "idle_timeout": "2s", "max_header_bytes": 8192,
                       "max_body_bytes": 65536,
                       "routes": [{"match": {"path_prefix": "/nope"}, "cluster": "dead"},
                                  {"match": {"path_prefix": "/good"}, "cluster": "good"},
                                  {"cluster": "app"}]}],
        # Retries on every condition, short ejections and quick probes: the fuzzed responses
        # drive the retry, ejection and half-open paths too, while most requests still reach
        # the fuzzing upstream.
        "clusters": [{"name": "app", "endpoints": [main_address], "timeout": "1s",
                      "connect_timeout": "250ms", "idle_timeout": "1s",
                      "retry": {"retries": 2, "on": ["connect-failure", "reset", "5xx", "gateway-error"],
                                "per_try_timeout": "400ms", "backoff": {"base": "1ms", "max": "5ms"},
                                "budget": {"ratio": 1.0, "min_per_second": 1000}},
                      "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": "50ms",
                                            "max_ejection_time": "200ms"}},
                     {"name": "good", "endpoints": [good_address], "timeout": "2s"},
                     {"name": "dead", "endpoints": ["127.0.0.1:1"], "connect_timeout": "100ms",
                      "outlier_detection": {"consecutive_failures": 1, "base_ejection_time": "50ms"}}],
    }


def fuzz_client(rng, port, corpus, mutate_requests, deadline, stats):
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            stats["connect_failures"] += 1
            time.sleep(0.01)
            continue
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for _ in range(rng.randint(1, 4)):
                data = rng.choice(corpus)
                if mutate_requests:
                    if rng.random() < 0.85:
                        data = mutate(rng, data, corpus)
                    if rng.random() < 0.2:
                        data = b"".join(rng.choice(corpus) for _ in range(rng.randint(2, 6))) + data
                stats["messages"] += 1
                if not send_split(rng, s, data, deadline):
                    break
                stats["bytes_back"] += read_for(s, time.monotonic() + rng.choice([0.0, 0.01, 0.05, 0.2]))
        finally:
            close_randomly(rng, s)


class FuzzTest(Base):
    def run_fuzz(self, mode, seconds, threads=FUZZ_THREADS):
        seed = FUZZ_SEED + (0 if mode == "requests" else 1)
        print("\nfuzz %s: seed %d, %.0f s (PF_FUZZ_SEED=%d to repeat)" % (mode, seed, seconds, FUZZ_SEED),
              file=sys.stderr, flush=True)
        rng = random.Random(seed)
        good = StrictUpstream()
        self.addCleanup(good.stop)
        if mode == "requests":
            main = good
            corpus = REQUEST_CORPUS
        else:
            main = MutatingUpstream(rng.randrange(1 << 30))
            self.addCleanup(main.stop)
            corpus = [b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n", b"HEAD /r HTTP/1.1\r\nHost: a\r\n\r\n",
                      b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
                      b"GET /r HTTP/1.0\r\n\r\n",
                      b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                      b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"]
        pf = self.start_pf(fuzz_policy(main.address, good.address))
        port = pf.port()
        time.sleep(0.2)
        fd0 = fd_count(pf.pid)
        stats = {"messages": 0, "bytes_back": 0, "connect_failures": 0}
        deadline = time.monotonic() + seconds
        workers = [threading.Thread(target=fuzz_client, daemon=True,
                                    args=(random.Random(rng.randrange(1 << 30)), port, corpus,
                                          mode == "requests", deadline, stats))
                   for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(seconds + 30)
        print("fuzz %s: %d messages, %d bytes back, %d connect failures"
              % (mode, stats["messages"], stats["bytes_back"], stats["connect_failures"]),
              file=sys.stderr, flush=True)
        if not pf.alive():
            pf.reader.join(2)
            with pf.lock:
                lines = list(pf.lines)
            first = next((i for i, l in enumerate(lines) if "Sanitizer" in l or "runtime error:" in l), max(0, len(lines) - 150))
            self.fail("pilotfish died during the fuzz (seed %d), exit %s:\n%s"
                      % (seed, pf.proc.returncode, "\n".join(lines[max(0, first - 5):first + 80])))
        r = h.request(port, "GET", "/good/after-fuzz", timeout=5)
        self.assertEqual(r.status, 200, "a valid request after the fuzz: %r" % r)
        # Sessions end within header/body/idle timeouts (1-2 s) plus a lingering close (2 s).
        try:
            h.wait_for(lambda: fd_count(pf.pid) <= fd0 + 2, 10.0, what="descriptors back near %d" % fd0)
        except AssertionError:
            self.fail("descriptor leak after the fuzz (seed %d): %d -> %d" % (seed, fd0, fd_count(pf.pid)))
        if good.violations:
            self.fail("the upstream received bytes that are not clean HTTP/1.1 (seed %d):\n  %s"
                      % (seed, "\n  ".join(good.violations)))
        self.stop_pf(pf, 40)

    def test_fuzz_requests(self):
        self.run_fuzz("requests", FUZZ_SECONDS)

    def test_fuzz_responses(self):
        self.run_fuzz("responses", FUZZ_SECONDS)


if __name__ == "__main__":
    h.main()
