#!/usr/bin/env python3
"""The admin listener and the metrics: every endpoint of the contract, exact counter values
after a known mix of traffic, `promtool check metrics` on the output, concurrent scrapes under
load from two workers, and /ready flipping to 503 on POST /drain."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ADMIN_RE = re.compile(r" admin on 127\.0\.0\.1:(\d+)")


def admin_port(pf):
    for line in pf.log(last=1000).splitlines():
        m = ADMIN_RE.search(line)
        if m:
            return int(m.group(1))
    raise AssertionError("no 'admin on' line in the log:\n" + pf.log())


def admin(pf, path, method="GET"):
    """(status, headers, body text) of an admin request."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (admin_port(pf), path), method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


samples = h.parse_samples


def value(s, name, **labels):
    return s.get((name, frozenset(labels.items())))


def get(port, path, host="a"):
    c = h.Client(port)
    try:
        c.send(h.build_request("GET", path, host=host, headers=[("Connection", "close")]))
        return c.read_response()
    finally:
        c.close()


class AdminTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        policy = h.simple_policy(self.up, routes=[{"match": {"path_prefix": "/api"}, "cluster": "app"},
                                                 {"match": {"path_prefix": "/slow"}, "cluster": "app"}])
        self.pf = h.Pilotfish(policy)

    def tearDown(self):
        self.pf.kill()
        self.up.stop()

    def test_endpoints(self):
        status, headers, body = admin(self.pf, "/ready")
        self.assertEqual(status, 200)
        self.assertEqual(admin(self.pf, "/live")[0], 200)

        status, headers, body = admin(self.pf, "/config")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("application/json"))
        config = json.loads(body)
        with open(self.pf.config, "rb") as f:
            self.assertEqual(config["sha256"], hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(config["version"], 1)
        self.assertRegex(config["loaded_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(config["policy"]["listeners"][0]["name"], "ingress")
        self.assertEqual(config["policy"]["listeners"][0]["routes"][0]["match"]["path_prefix"], "/api")
        self.assertEqual(config["policy"]["clusters"][0]["endpoints"], [self.up.address])
        self.assertEqual(config["policy"]["clusters"][0]["timeout"], "15s")  # a default, filled in
        # Numbers as an operator writes them, not 0.20000000000000001.
        self.assertIn('"budget":{"ratio":0.2,"min_per_second":10}', body)

        status, _, body = admin(self.pf, "/clusters")
        self.assertEqual(status, 200)
        clusters = json.loads(body)["clusters"]
        self.assertEqual([c["name"] for c in clusters], ["app"])
        self.assertEqual(clusters[0]["endpoints"], [{"address": self.up.address, "health": "ok", "ejected_until": None,
                                                     "ejections": 0, "consecutive_failures": 0}])
        self.assertEqual(clusters[0]["circuit_breaker"]["max_requests"], 1024)
        self.assertEqual(clusters[0]["in_flight"],
                         {"connections": clusters[0]["open_connections"], "pending_requests": 0, "requests": 0,
                          "retries": 0})
        self.assertEqual(clusters[0]["endpoints_ejected"], 0)

        status, _, body = admin(self.pf, "/policy/history")
        self.assertEqual(status, 200)
        events = json.loads(body)["events"]
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["outcome"], "applied")
        self.assertEqual(events[0]["trigger"], "startup")

        self.assertEqual(admin(self.pf, "/nope")[0], 404)
        self.assertEqual(admin(self.pf, "/metrics", method="POST")[0], 405)
        status, headers, _ = admin(self.pf, "/drain", method="GET")
        self.assertEqual(status, 405)
        self.assertEqual(headers.get("allow"), "POST")
        self.pf.stop_and_check(self)

    def test_open_connections_in_clusters(self):
        c = h.Client(self.pf.port())
        c.send(h.build_request("GET", "/api/x", host="a"))
        self.assertEqual(c.read_response().status, 200)
        clusters = json.loads(admin(self.pf, "/clusters")[2])["clusters"]
        self.assertEqual(clusters[0]["open_connections"], 1)  # pooled, kept open
        c.close()
        self.pf.stop_and_check(self)

    def test_drain_flips_ready(self):
        self.assertEqual(admin(self.pf, "/ready")[0], 200)
        # A request in flight (the upstream answers after 2 s) holds the drain open long
        # enough to see /ready answer 503; it still completes.
        c = h.Client(self.pf.port(), timeout=10)
        c.send(h.build_request("GET", "/slow?ms=2000", host="a"))
        time.sleep(0.3)
        status, _, body = admin(self.pf, "/drain", method="POST")
        self.assertEqual(status, 202)
        self.assertEqual(json.loads(body), {"draining": True})
        status, _, body = admin(self.pf, "/ready")
        self.assertEqual(status, 503)
        self.assertEqual(body, "draining\n")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("connection"), "close")
        c.close()
        self.pf.proc.wait(15)
        self.assertEqual(self.pf.proc.returncode, 0)


class MetricsTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.dead = h.free_port()  # nothing listens here
        policy = h.simple_policy(self.up, routes=[{"match": {"path_prefix": "/api"}, "cluster": "app"},
                                                 {"match": {"path_prefix": "/dead"}, "cluster": "dead"}])
        policy["clusters"].append({"name": "dead", "endpoints": ["127.0.0.1:%d" % self.dead],
                                   "retry": {"retries": 0}})
        self.pf = h.Pilotfish(policy)

    def tearDown(self):
        self.pf.kill()
        self.up.stop()

    def test_exact_values_after_known_traffic(self):
        for _ in range(3):
            self.assertEqual(get(self.pf.port(), "/api/ok").status, 200)
        for _ in range(2):
            self.assertEqual(get(self.pf.port(), "/nowhere").status, 404)
        self.assertEqual(get(self.pf.port(), "/dead/x").status, 503)
        c = h.Client(self.pf.port())
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertEqual(c.read_response().status, 400)
        c.close()

        status, headers, text = admin(self.pf, "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version=0.0.4"))
        s = samples(text)
        self.assertEqual(value(s, "pilotfish_requests_total", listener="ingress", route="", cluster="app", code="200"), 3)
        self.assertEqual(value(s, "pilotfish_requests_total", listener="ingress", route="", cluster="", code="404"), 2)
        self.assertEqual(value(s, "pilotfish_requests_total", listener="ingress", route="", cluster="dead", code="503"), 1)
        self.assertEqual(value(s, "pilotfish_requests_total", listener="ingress", route="", cluster="", code="400"), 1)
        self.assertEqual(value(s, "pilotfish_request_duration_seconds_count", listener="ingress", route="", cluster="app"), 3)
        self.assertEqual(value(s, "pilotfish_request_duration_seconds_bucket", listener="ingress", route="", cluster="app",
                               le="+Inf"), 3)
        self.assertEqual(value(s, "pilotfish_upstream_requests_total", cluster="app", code="200"), 3)
        self.assertEqual(value(s, "pilotfish_upstream_requests_total", cluster="dead", code="connect_failure"), 1)
        self.assertEqual(value(s, "pilotfish_downstream_connections_total", listener="ingress"), 7)
        self.assertEqual(value(s, "pilotfish_upstream_connections", cluster="app"), 1)
        self.assertEqual(value(s, "pilotfish_circuit_breaker_overflow_total", cluster="app", limit="requests"), 0)
        self.assertEqual(value(s, "pilotfish_build_info", version="0.1.0"), 1)
        with open(self.pf.config, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(value(s, "pilotfish_policy_info", version="1", sha256=sha), 1)
        self.assertEqual(value(s, "pilotfish_policy_reloads_total", result="applied"), 0)
        self.assertEqual(value(s, "pilotfish_tls_handshakes_total", direction="inbound", result="ok"), 0)
        # No label takes a value from a request: the paths asked for appear nowhere.
        self.assertNotIn("/api/ok", text)
        self.assertNotIn("/nowhere", text)
        self.pf.stop_and_check(self)

    def test_promtool_accepts_the_exposition(self):
        self.assertIsNotNone(shutil.which("promtool"), "promtool (Debian package prometheus) is required")
        get(self.pf.port(), "/api/ok")
        get(self.pf.port(), "/nowhere")
        _, _, text = admin(self.pf, "/metrics")
        r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        self.pf.stop_and_check(self)


class ConcurrentScrapeTest(unittest.TestCase):
    def test_counters_grow_and_sum_to_the_requests_made(self):
        up = h.Upstream("echo")
        pf = h.Pilotfish(h.simple_policy(up, workers=2))
        try:
            port = pf.port()
            made = [0, 0]
            stop = time.time() + 3.0

            def load(slot):
                while time.time() < stop:
                    c = h.Client(port)
                    for _ in range(20):
                        c.send(h.build_request("GET", "/x", host="a"))
                        self.assertEqual(c.read_response().status, 200)
                        made[slot] += 1
                    c.close()

            threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            seen = []
            while any(t.is_alive() for t in threads):
                s = samples(admin(pf, "/metrics")[2])
                seen.append(value(s, "pilotfish_requests_total", listener="ingress", route="", cluster="app", code="200") or 0)
                time.sleep(0.05)
            for t in threads:
                t.join()
            self.assertGreater(len(seen), 5)
            self.assertEqual(seen, sorted(seen), "a counter went backwards between scrapes")
            final = samples(admin(pf, "/metrics")[2])
            self.assertEqual(value(final, "pilotfish_requests_total", listener="ingress", route="", cluster="app", code="200"),
                             sum(made))
            self.assertEqual(value(final, "pilotfish_upstream_requests_total", cluster="app", code="200"), sum(made))
            pf.stop_and_check(self)
        finally:
            pf.kill()
            up.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
