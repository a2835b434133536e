#!/usr/bin/env python3
"""Request smuggling is impossible by construction: every malformed request listed in the
Foundation issue is answered 400 (or 431), the connection is closed, and nothing of it (nor of a
valid request pipelined behind it) reaches the upstream. Also: CONNECT is refused with 405.

Each case sends the malformed request followed, in the same write, by a valid request for
/smuggled/<case>. It then asserts: exactly one response, with the expected status and an
x-pilotfish-error header; the connection closed; and - after a valid barrier request on a new
connection has reached the upstream - that the upstream never saw /m/<case> or /smuggled/<case>
and received no bytes outside the requests it parsed."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MAX_HEADER_BYTES = 4096


def req(name, headers, body=b"", method="POST", line_end=b"\r\n", head_end=b"\r\n", version=b"HTTP/1.1"):
    """A request for /m/<name>: headers is the raw header block (bytes, each line with its ending)."""
    return (method.encode() + b" /m/" + name.encode() + b" " + version + line_end + headers + head_end + body)


CASES = [
    # -- Transfer-Encoding and Content-Length together ------------------------------------------
    ("te_and_cl", req("te_and_cl", b"Host: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                      b"0\r\n\r\n"), 400),
    ("cl_and_te", req("cl_and_te", b"Host: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                      b"0\r\n\r\n"), 400),
    ("cl0_and_te", req("cl0_and_te", b"Host: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                       b"5\r\nhello\r\n0\r\n\r\n"), 400),
    # -- more than one Content-Length ----------------------------------------------------------
    ("two_cl_same", req("two_cl_same", b"Host: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400),
    ("two_cl_diff", req("two_cl_diff", b"Host: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), 400),
    ("cl_list", req("cl_list", b"Host: a\r\nContent-Length: 5, 5\r\n", b"hello"), 400),
    # (not in the list, but the same family: a Content-Length that is not 1*DIGIT)
    ("cl_plus", req("cl_plus", b"Host: a\r\nContent-Length: +5\r\n", b"hello"), 400),
    ("cl_negative", req("cl_negative", b"Host: a\r\nContent-Length: -5\r\n", b"hello"), 400),
    ("cl_hex", req("cl_hex", b"Host: a\r\nContent-Length: 0x5\r\n", b"hello"), 400),
    # -- Transfer-Encoding other than a final chunked --------------------------------------------
    ("te_gzip", req("te_gzip", b"Host: a\r\nTransfer-Encoding: gzip\r\n", b"hello"), 400),
    ("te_identity", req("te_identity", b"Host: a\r\nTransfer-Encoding: identity\r\n", b"hello"), 400),
    ("te_chunked_gzip", req("te_chunked_gzip", b"Host: a\r\nTransfer-Encoding: chunked, gzip\r\n",
                            b"0\r\n\r\n"), 400),
    ("te_xchunked", req("te_xchunked", b"Host: a\r\nTransfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400),
    ("te_gzip_header_after_chunked", req("te_gzip_header_after_chunked",
                                         b"Host: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
                                         b"0\r\n\r\n"), 400),
    ("te_chunked_twice", req("te_chunked_twice",
                             b"Host: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                             b"0\r\n\r\n"), 400),
    # -- invalid chunk size / chunk framing ------------------------------------------------------
    ("chunk_size_garbage", req("chunk_size_garbage", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
                               b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk_size_negative", req("chunk_size_negative", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
                                b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk_size_0x", req("chunk_size_0x", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
                          b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk_size_overflow", req("chunk_size_overflow", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
                                b"fffffffffffffffff5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk_size_empty", req("chunk_size_empty", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
                             b"\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk_data_too_long", req("chunk_data_too_long", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
                                b"5\r\nhelloXX\r\n0\r\n\r\n"), 400),
    # -- obs-fold ------------------------------------------------------------------------------
    ("obs_fold_space", req("obs_fold_space", b"Host: a\r\nX-Foo: a\r\n b\r\nContent-Length: 0\r\n"), 400),
    ("obs_fold_tab", req("obs_fold_tab", b"Host: a\r\nX-Foo: a\r\n\tb\r\nContent-Length: 0\r\n"), 400),
    ("obs_fold_first_line", req("obs_fold_first_line", b" X-Foo: a\r\nHost: a\r\nContent-Length: 0\r\n"), 400),
    ("obs_fold_cl", req("obs_fold_cl", b"Host: a\r\nX-Foo: a\r\n Content-Length: 5\r\n", b"hello"), 400),
    # -- bare CR or bare LF where CRLF is required ----------------------------------------------
    ("bare_lf_request_line", req("bare_lf_request_line", b"Host: a\r\nContent-Length: 0\r\n", line_end=b"\n"), 400),
    ("bare_cr_request_line", req("bare_cr_request_line", b"Host: a\r\nContent-Length: 0\r\n", line_end=b"\r"), 400),
    ("bare_lf_header", req("bare_lf_header", b"Host: a\nX-A: b\r\nContent-Length: 0\r\n"), 400),
    ("bare_cr_header", req("bare_cr_header", b"Host: a\r\nX-A: b\rX-B: c\r\nContent-Length: 0\r\n"), 400),
    ("bare_lf_head_end", req("bare_lf_head_end", b"Host: a\r\nContent-Length: 0\r\n", head_end=b"\n"), 400),
    ("bare_lf_chunk_size", req("bare_lf_chunk_size", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
                               b"5\nhello\r\n0\r\n\r\n"), 400),
    ("bare_lf_chunk_data", req("bare_lf_chunk_data", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
                               b"5\r\nhello\n0\r\n\r\n"), 400),
    ("bare_cr_chunk_size", req("bare_cr_chunk_size", b"Host: a\r\nTransfer-Encoding: chunked\r\n",
                               b"5\rhello\r\n0\r\n\r\n"), 400),
    # -- HTTP/1.1 without exactly one valid Host -------------------------------------------------
    ("no_host", req("no_host", b"Content-Length: 0\r\n", method="GET"), 400),
    ("two_hosts_same", req("two_hosts_same", b"Host: a\r\nHost: a\r\n", method="GET"), 400),
    ("two_hosts_diff", req("two_hosts_diff", b"Host: a\r\nHost: b\r\n", method="GET"), 400),
    ("host_list", req("host_list", b"Host: a, b\r\n", method="GET"), 400),
    ("host_space", req("host_space", b"Host: a b\r\n", method="GET"), 400),
    ("host_slash", req("host_slash", b"Host: a/b\r\n", method="GET"), 400),
    ("host_userinfo", req("host_userinfo", b"Host: user@a\r\n", method="GET"), 400),
    ("host_bad_port", req("host_bad_port", b"Host: a:port\r\n", method="GET"), 400),
    ("host_open_bracket", req("host_open_bracket", b"Host: [::1\r\n", method="GET"), 400),
    # -- whitespace between a header name and its colon ------------------------------------------
    ("space_before_colon", req("space_before_colon", b"Host: a\r\nX-Foo : b\r\nContent-Length: 0\r\n"), 400),
    ("tab_before_colon", req("tab_before_colon", b"Host: a\r\nX-Foo\t: b\r\nContent-Length: 0\r\n"), 400),
    ("space_before_colon_cl", req("space_before_colon_cl", b"Host: a\r\nContent-Length : 5\r\n", b"hello"), 400),
    ("space_before_colon_te", req("space_before_colon_te", b"Host: a\r\nTransfer-Encoding : chunked\r\n",
                                  b"0\r\n\r\n"), 400),
    ("space_before_colon_host", req("space_before_colon_host", b"Host : a\r\n", method="GET"), 400),
    # -- NUL or other control character in a header ----------------------------------------------
    ("nul_in_value", req("nul_in_value", b"Host: a\r\nX-A: a\x00b\r\nContent-Length: 0\r\n"), 400),
    ("ctl01_in_value", req("ctl01_in_value", b"Host: a\r\nX-A: a\x01b\r\nContent-Length: 0\r\n"), 400),
    ("esc_in_value", req("esc_in_value", b"Host: a\r\nX-A: a\x1bb\r\nContent-Length: 0\r\n"), 400),
    ("ctl1f_in_value", req("ctl1f_in_value", b"Host: a\r\nX-A: a\x1fb\r\nContent-Length: 0\r\n"), 400),
    ("del_in_value", req("del_in_value", b"Host: a\r\nX-A: a\x7fb\r\nContent-Length: 0\r\n"), 400),
    ("nul_in_name", req("nul_in_name", b"Host: a\r\nX-\x00A: b\r\nContent-Length: 0\r\n"), 400),
    ("ctl_in_name", req("ctl_in_name", b"Host: a\r\nX-\x01A: b\r\nContent-Length: 0\r\n"), 400),
    ("nul_in_host", req("nul_in_host", b"Host: a\x00b\r\n", method="GET"), 400),
    # -- head over max_header_bytes -> 431 --------------------------------------------------------
    ("head_over_limit_one_header", req("head_over_limit_one_header",
                                       b"Host: a\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 100) + b"\r\n",
                                       method="GET"), 431),
    ("head_over_limit_many_headers", req("head_over_limit_many_headers",
                                         b"Host: a\r\n" + b"".join(b"X-H%03d: %s\r\n" % (i, b"v" * 50)
                                                                   for i in range(100)), method="GET"), 431),
    ("head_over_limit_request_line", b"GET /m/head_over_limit_request_line/" + b"a" * (MAX_HEADER_BYTES + 100)
     + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431),
]


class MalformedTest(unittest.TestCase):
    # A fresh upstream and pilotfish for every case, so that one case's leak cannot spoil the next.
    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)
        self.pf = h.Pilotfish(h.simple_policy(self.up, listener={"max_header_bytes": MAX_HEADER_BYTES}))
        self.addCleanup(self.pf.kill)
        self.port = self.pf.port()

    def tearDown(self):
        self.pf.stop_and_check(self)

    def assert_upstream_saw_nothing(self, name):
        # A valid request on a new connection: once it has arrived, anything pilotfish had
        # forwarded from the malformed one would have arrived before it.
        barrier = "/barrier/" + name
        r = h.request(self.port, "GET", barrier)
        self.assertEqual(r.status, 200, "the barrier request failed: %r\n%s" % (r, self.pf.log()))
        st = self.up.stats()
        targets = [q["target"] for q in st["requests"]]
        self.assertIn(barrier, targets)
        leaked = [t for t in targets if t.startswith("/m/") or t.startswith("/smuggled/")]
        leaked = [q for q in st["requests"] if q["target"] in leaked]
        self.assertEqual(leaked, [], "the upstream received requests it must never see")
        self.assertEqual(st["bytes_in"], st["bytes_parsed"],
                         "the upstream received %d bytes outside any request it could parse"
                         % (st["bytes_in"] - st["bytes_parsed"]))

    def check_rejected(self, name, raw, status):
        smuggled = b"GET /smuggled/" + name.encode() + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        c = h.Client(self.port, timeout=5)
        try:
            try:
                c.send(raw + smuggled)
            except (BrokenPipeError, ConnectionResetError):
                pass
            data, closed = c.read_until_close(timeout=3)
        finally:
            c.close()
        self.assertTrue(data, "no response at all to %r (connection %s)"
                        % (raw[:200], "closed" if closed else "still open after 3s"))
        responses = h.parse_responses(data)
        self.assertEqual(len(responses), 1, "exactly one response expected, got %r" % responses)
        r = responses[0]
        self.assertEqual(r.status, status, "malformed request %r answered %r" % (raw[:300], r))
        self.assertTrue(r.has_header("x-pilotfish-error"), "no x-pilotfish-error header: %r" % r)
        self.assertTrue(closed, "the connection must be closed after %d" % status)
        self.assertTrue(r.body.strip(), "a one-line text body is expected")
        self.assertEqual(len(r.body.strip().splitlines()), 1, "a one-line text body is expected: %r" % r.body)

    def test_request_just_under_header_limit_is_accepted(self):
        r = h.request(self.port, "GET", "/under-limit", headers=[("X-Big", "a" * (MAX_HEADER_BYTES - 300))])
        self.assertEqual(r.status, 200, r)

    def test_connect_refused(self):
        c = h.Client(self.port, timeout=5)
        try:
            c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            r = c.read_response(timeout=3)
        finally:
            c.close()
        self.assertEqual(r.status, 405, r)
        self.assertEqual(r.header("x-pilotfish-error"), "connect_refused")
        r = h.request(self.port, "GET", "/barrier/connect")
        self.assertEqual(r.status, 200)
        self.assertEqual([q["method"] for q in self.up.requests() if q["method"] == "CONNECT"], [],
                         "a CONNECT reached the upstream")

    def test_worker_keeps_serving_after_rejections(self):
        for name, raw, _ in CASES[:8]:
            c = h.Client(self.port)
            try:
                c.send(raw)
                c.read_until_close(timeout=2)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                c.close()
        with h.Client(self.port) as c:
            for i in range(3):
                r = c.request("GET", "/still-ok/%d" % i)
                self.assertEqual(r.status, 200)


def _make(name, raw, status):
    def test(self):
        self.check_rejected(name, raw, status)
        self.assert_upstream_saw_nothing(name)
    test.__doc__ = "%s -> %d, closed, upstream saw nothing" % (name, status)
    return test


for _name, _raw, _status in CASES:
    setattr(MalformedTest, "test_" + _name, _make(_name, _raw, _status))


if __name__ == "__main__":
    h.main()
