#!/usr/bin/env python3
"""W3C trace context (issue 19), through the real binary with a real upstream: a request without a
traceparent starts a trace, a valid one is continued with a new parent id at each hop and its
sampled flag and tracestate kept, an invalid one is replaced (its tracestate dropped), the trace id
is in the access log, a chain of two sidecars keeps one trace id, curl over HTTP/2 is traced the
same, and a route's header rules cannot touch the trace context."""
import json
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


def fields(record, name):
    return [v for n, v in record["headers"] if n.lower() == name]


def traceparent(record):
    values = fields(record, "traceparent")
    assert len(values) == 1, record["headers"]
    m = TRACEPARENT.match(values[0])
    assert m, values[0]
    return m.groups()


class TraceContextTest(unittest.TestCase):
    def setUp(self):
        self.app = h.Upstream("echo", name="app")
        self.addCleanup(self.app.stop)
        self.dir = h.make_tmpdir("pf-trace-")
        self.log = os.path.join(self.dir, "access.log")
        self.pf = h.Pilotfish(h.simple_policy(self.app, access_log=self.log, routes=[
            {"match": {"path_prefix": "/gone"}, "respond": {"status": 410}}, {"cluster": "app"}]))
        self.addCleanup(self.pf.kill)

    def test_started_continued_and_replaced(self):
        port = self.pf.port()
        with h.Client(port) as c:
            # 1, 2: none: each starts a trace of its own, sampled.
            self.assertEqual(c.request(target="/a").status, 200)
            self.assertEqual(c.request(target="/b").status, 200)
            # 3: a valid one, not sampled, with tracestate in two fields: continued.
            self.assertEqual(c.request(target="/c", headers=[("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE"),
                                                            ("TraceState", "rojo=00f067aa0ba902b7")]).status, 200)
            # 4: an invalid one (upper-case hex): a new trace, its tracestate dropped.
            self.assertEqual(c.request(target="/d", headers=[("traceparent", VALID.upper()),
                                                            ("tracestate", "congo=x")]).status, 200)
            # 5: a later version with more after it: read by its first fields, sent as 00.
            self.assertEqual(c.request(target="/e", headers=[
                ("traceparent", "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-more")]).status, 200)
        got = self.app.wait_requests(5)
        t1, t2, t3, t4, t5 = (traceparent(r) for r in got)
        self.assertEqual((t1[2], t2[2]), ("01", "01"))
        self.assertNotEqual(t1[0], t2[0])
        self.assertEqual(t3[0], "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertNotEqual(t3[1], "00f067aa0ba902b7")  # this hop's own parent id
        self.assertEqual(t3[2], "00")  # the sampled flag kept
        self.assertEqual(fields(got[2], "tracestate"), ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"])
        self.assertNotEqual(t4[0], "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(fields(got[3], "tracestate"), [])
        self.assertEqual((t5[0], t5[2]), ("4bf92f3577b34da6a3ce929d0e0e4736", "03"))
        # The access log names each request's trace.
        lines = h.access_log_records(self.log, 5)
        self.assertEqual([line["trace_id"] for line in lines], [t[0] for t in (t1, t2, t3, t4, t5)])

    def test_http2_client(self):
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "traceparent: " + VALID,
                              "http://127.0.0.1:%d/h2" % self.pf.port()], capture_output=True, text=True, timeout=20)
        self.assertEqual(json.loads(out.stdout)["target"], "/h2", out.stderr)
        t = traceparent(self.app.wait_requests(1)[0])
        self.assertEqual((t[0], t[2]), ("4bf92f3577b34da6a3ce929d0e0e4736", "00"))

    def test_a_local_answer_is_logged_with_its_trace(self):
        self.assertEqual(h.request(self.pf.port(), target="/gone/x", headers=[("traceparent", VALID)]).status, 410)
        line = h.access_log_records(self.log, 1)[0]
        self.assertEqual((line["status"], line["trace_id"]), (410, "4bf92f3577b34da6a3ce929d0e0e4736"))


class TraceChainTest(unittest.TestCase):
    def test_two_sidecars_keep_one_trace(self):
        app = h.Upstream("echo", name="app")
        self.addCleanup(app.stop)
        d = h.make_tmpdir("pf-trace-chain-")
        logs = [os.path.join(d, "b.log"), os.path.join(d, "a.log")]
        b = h.Pilotfish(h.simple_policy(app, access_log=logs[0]))
        self.addCleanup(b.kill)
        a = h.Pilotfish(h.simple_policy("127.0.0.1:%d" % b.port(), access_log=logs[1]))
        self.addCleanup(a.kill)
        self.assertEqual(h.request(a.port(), target="/hop").status, 200)
        trace, parent, flags = traceparent(app.wait_requests(1)[0])
        ids = [h.access_log_records(path, 1)[0]["trace_id"] for path in logs]
        self.assertEqual(ids, [trace, trace])
        self.assertEqual(flags, "01")


class CheckTest(unittest.TestCase):
    def test_header_rules_cannot_touch_the_trace_context(self):
        for name in ("traceparent", "TraceState"):
            rc, out = h.check_policy(h.simple_policy("127.0.0.1:1", routes=[
                {"cluster": "app", "request_headers": {"remove": [name]}}]))
            self.assertEqual(rc, 1, out)
            self.assertIn("W3C trace context", out)


if __name__ == "__main__":
    h.main()
