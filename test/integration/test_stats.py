#!/usr/bin/env python3
"""Golden signals per route (issue 19): GET /stats on the admin listener (and its read-only
address) and `pilotfish top`, against the real binary under real traffic: request counts, success
rates and percentiles per listener, route and cluster, busiest first."""
import http.client
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class StatsTest(unittest.TestCase):
    def setUp(self):
        self.app = h.Upstream("echo", name="app")
        self.addCleanup(self.app.stop)
        policy = h.simple_policy(self.app, workers=2, routes=[
            {"name": "api", "match": {"path_prefix": "/status/"}, "cluster": "app"},
            {"name": "web", "cluster": "app"}])
        policy["admin"]["read_only_address"] = "127.0.0.1:0"
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.pf.kill)

    def load(self):
        with h.Client(self.pf.port()) as c:
            for i in range(200):  # a quarter of them answered 503 by the app
                self.assertEqual(c.request(target="/status/503" if i % 4 == 0 else "/status/200").status,
                                 503 if i % 4 == 0 else 200)
            for _ in range(50):
                self.assertEqual(c.request(target="/web").status, 200)

    def stats(self):
        """/stats once its once-a-second sample has every request of load()."""
        def sampled():
            status, doc, headers = h.admin_json(self.pf, "/stats")
            self.assertEqual((status, headers.get("content-type")), (200, "application/json"))
            return doc if sum(r["1m"]["requests"] for r in doc["routes"]) == 250 else None
        return h.wait_for(sampled, 10, interval=0.2, what="250 requests in /stats")

    def test_golden_signals_per_route(self):
        self.load()
        doc = self.stats()
        self.assertEqual([(r["listener"], r["route"], r["cluster"]) for r in doc["routes"]],
                         [("ingress", "api", "app"), ("ingress", "web", "app")])  # busiest first
        api, web = doc["routes"]
        self.assertEqual((api["1m"]["requests"], web["1m"]["requests"]), (200, 50))
        self.assertEqual((api["1m"]["success_rate"], web["1m"]["success_rate"]), (0.75, 1.0))
        for window in ("10s", "1m"):
            for r in (api, web):
                # The last 10 s hold all of it unless the machine was slow: never more.
                self.assertLessEqual(r["10s"]["requests"], r["1m"]["requests"])
                w = r[window]
                if window == "10s" and w["requests"] == 0:
                    self.assertIsNone(w["p50_ms"])  # a slow machine: the load is older than 10 s
                    continue
                self.assertGreater(w["rate"], 0)
                self.assertGreater(w["seconds"], 0)
                self.assertLessEqual(w["rate"], w["requests"] / w["seconds"] + 1e-9)
                self.assertTrue(0 < w["p50_ms"] <= w["p95_ms"] <= w["p99_ms"] <= 10000, w)

    def test_an_unknown_format_is_refused(self):
        status, _, body = h.admin_request(self.pf, "/stats?format=xml")
        self.assertEqual(status, 400)
        self.assertIn("?format=table", body)

    def test_top(self):
        self.load()
        self.stats()
        admin = "127.0.0.1:%d" % h.admin_port(self.pf)
        r = subprocess.run([h.BIN, "top", "--admin", admin, "--once"], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertIn("LISTENER", lines[1])
        rows = [line.split() for line in lines[2:]]
        self.assertEqual([row[:3] for row in rows], [["ingress", "api", "app"], ["ingress", "web", "app"]])
        self.assertEqual((rows[0][4], rows[1][4]), ("75.0%", "100.0%"))
        # A sidecar that does not answer: a clear error, exit 1.
        r = subprocess.run([h.BIN, "top", "--admin", "127.0.0.1:%d" % h.free_port(), "--once"],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 1)
        self.assertIn("pilotfish top: GET /stats at 127.0.0.1:", r.stderr)
        r = subprocess.run([h.BIN, "top"], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 2)
        self.assertIn("top needs --config FILE or --admin HOST:PORT", r.stderr)

    def test_read_only_address_serves_it(self):
        port = int(h.wait_log(self.pf, r"read-only admin \(/metrics /stats /ready /live\) on 127\.0\.0\.1:(\d+)").group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("GET", "/stats?format=table")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertIn("LISTENER", resp.read().decode())


if __name__ == "__main__":
    h.main()
