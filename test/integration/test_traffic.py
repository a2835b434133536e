#!/usr/bin/env python3
"""Traffic management on a route (issue 17), through the real binary with real upstreams: route
names in the access log and as the metrics' `route` label, and `check`'s errors for what a
route cannot say."""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def log_records(path, count, timeout=5.0):
    """The first `count` JSON lines of an access log file, once they are there."""
    def read():
        try:
            with open(path) as f:
                lines = [json.loads(line) for line in f if line.strip()]
        except OSError:
            return None
        return lines if len(lines) >= count else None
    return h.wait_for(read, timeout, what="%d access-log lines in %s" % (count, path))


class RouteNameTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.dir = h.make_tmpdir("pf-traffic-")
        self.log = os.path.join(self.dir, "access.log")
        policy = h.simple_policy(self.up, access_log=self.log, routes=[
            {"name": "api", "match": {"path_prefix": "/api"}, "cluster": "app"},
            {"match": {"path_prefix": "/web"}, "cluster": "app"}])
        self.pf = h.Pilotfish(policy)
        self.addCleanup(self.up.stop)
        self.addCleanup(self.pf.kill)

    def test_name_in_metrics_and_access_log(self):
        port = self.pf.port()
        for target, status in [("/api/a", 200), ("/api/b", 200), ("/api/c", 200), ("/web/a", 200),
                               ("/web/b", 200), ("/nowhere", 404)]:
            self.assertEqual(h.request(port, target=target).status, status, target)
        m = h.metrics(self.pf)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="api", cluster="app",
                                  code="200"), 3)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="", cluster="app",
                                  code="200"), 2)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="", cluster="",
                                  code="404"), 1)
        self.assertEqual(h.sample(m, "pilotfish_request_duration_seconds_count", listener="ingress", route="api",
                                  cluster="app"), 3)
        self.assertEqual(h.sample(m, "pilotfish_request_duration_seconds_count", listener="ingress", route="",
                                  cluster="app"), 2)
        records = log_records(self.log, 6)
        self.assertEqual([r["route"] for r in records], ["api", "api", "api", "", "", ""])
        self.assertEqual([r["path"] for r in records], ["/api/a", "/api/b", "/api/c", "/web/a", "/web/b", "/nowhere"])

    def test_renamed_route_drops_its_series_on_reload(self):
        port = self.pf.port()
        self.assertEqual(h.request(port, target="/api/a").status, 200)
        policy = h.simple_policy(self.up, access_log=self.log, routes=[
            {"name": "api-v2", "match": {"path_prefix": "/api"}, "cluster": "app"},
            {"match": {"path_prefix": "/web"}, "cluster": "app"}])
        mark = h.log_mark(self.pf)
        h.write_policy(self.pf, policy)
        h.wait_log(self.pf, r"applied version 2", since=mark, timeout=15)
        self.assertEqual(h.request(port, target="/api/b").status, 200)
        m = h.metrics(self.pf)
        self.assertIsNone(h.sample(m, "pilotfish_requests_total", listener="ingress", route="api", cluster="app",
                                   code="200"))
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="ingress", route="api-v2", cluster="app",
                                  code="200"), 1)


class CheckTest(unittest.TestCase):
    """`pilotfish check` refuses what a route cannot say, with the file, line and column."""

    def check(self, routes, clusters=None):
        d = h.make_tmpdir("pf-traffic-check-")
        policy = {"version": 1, "service": "it", "listeners": [{"name": "ingress", "address": "127.0.0.1:0",
                                                                 "routes": routes}],
                  "clusters": clusters or [{"name": "app", "endpoints": ["127.0.0.1:1"]}]}
        path = os.path.join(d, "policy.yaml")
        with open(path, "w") as f:
            f.write(h.policy_text(policy))
        rc, out, err = h.run_cli(["check", "--config", path])
        return rc, out + err

    def test_route_names(self):
        rc, out = self.check([{"name": "a", "match": {"path_prefix": "/a"}, "cluster": "app"},
                              {"name": "a", "cluster": "app"}])
        self.assertEqual(rc, 1, out)
        self.assertIn("routes[1].name", out)
        self.assertIn("already the name of another route", out)
        rc, out = self.check([{"name": "has space", "cluster": "app"}])
        self.assertEqual(rc, 1, out)
        self.assertIn("is not a valid name", out)
        rc, out = self.check([{"name": "x" * 200, "cluster": "app"}])
        self.assertEqual(rc, 1, out)
        rc, out = self.check([{"name": "checkout-v1.2_a", "cluster": "app"}])
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    h.main()
