#!/usr/bin/env python3
"""The Prometheus example as a user would use it: Debian's `promtool` accepts
examples/prometheus/prometheus-local.yml, a real Prometheus (Debian's `prometheus`, on loopback,
its data in a temporary folder) scrapes a running pilotfish with it, its HTTP API answers
`pilotfish_requests_total` with the requests sent, and it accepts every query of the Grafana
dashboard (the main ones with data)."""

import json
import os
import re
import shutil
import subprocess
import sys
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

EXAMPLES = os.path.join(h.ROOT, "examples", "prometheus")
LOCAL = os.path.join(EXAMPLES, "prometheus-local.yml")
DASHBOARD = os.path.join(EXAMPLES, "grafana-dashboard.json")
REQUESTS = 7


def dashboard_queries():
    with open(DASHBOARD) as f:
        doc = json.load(f)
    out = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                out.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)
    return out


class PrometheusExampleTest(unittest.TestCase):
    def tool(self, name):
        path = shutil.which(name)
        self.assertIsNotNone(path, "%s is missing: scripts/install-deps.sh test installs it" % name)
        return path

    def test_promtool_accepts_the_local_configuration(self):
        r = subprocess.run([self.tool("promtool"), "check", "config", LOCAL], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout + r.stderr)

    def test_a_real_prometheus_scrapes_pilotfish_and_answers_the_dashboard(self):
        up = h.Upstream("echo")
        self.addCleanup(up.stop)
        pf = h.Pilotfish(h.simple_policy(up, workers=2))
        self.addCleanup(pf.kill)
        for i in range(REQUESTS):
            self.assertEqual(h.request(pf.port(), "GET", "/p/%d" % i).status, 200)

        # The example, pointed at this pilotfish and scraping every second.
        folder = h.make_tmpdir("pf-prom-")
        with open(LOCAL) as f:
            text = f.read()
        self.assertIn('"127.0.0.1:9901"', text)
        text = text.replace('"127.0.0.1:9901"', '"127.0.0.1:%d"' % h.admin_port(pf))
        text = re.sub(r"scrape_interval: \S+", "scrape_interval: 1s", text)
        config = os.path.join(folder, "prometheus.yml")
        with open(config, "w") as f:
            f.write(text)
        port = h.free_port()
        log = open(os.path.join(folder, "prometheus.log"), "wb")
        self.addCleanup(log.close)
        prom = h.spawn([self.tool("prometheus"), "--config.file=" + config,
                        "--storage.tsdb.path=" + os.path.join(folder, "data"),
                        "--web.listen-address=127.0.0.1:%d" % port],
                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(h.kill_proc, prom)
        api = "http://127.0.0.1:%d/api/v1/" % port

        def get(path, **params):
            url = api + path + ("?" + urllib.parse.urlencode(params) if params else "")
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())

        def prometheus_log():
            with open(os.path.join(folder, "prometheus.log"), errors="replace") as f:
                return f.read()[-3000:]

        def target_up():
            try:
                targets = get("targets")["data"]["activeTargets"]
            except OSError:
                return False
            return targets and all(t["health"] == "up" for t in targets) and targets
        targets = h.wait_for(target_up, 30, interval=0.2, what="the pilotfish target up:\n" + prometheus_log())
        self.assertEqual([t["labels"]["job"] for t in targets], ["pilotfish"])
        self.assertEqual(targets[0]["labels"]["service"], "demo")

        def requests_total():
            doc = get("query", query='sum(pilotfish_requests_total{listener="ingress"})')
            result = doc["data"]["result"]
            return result and float(result[0]["value"][1]) == REQUESTS
        h.wait_for(requests_total, 15, interval=0.2, what="pilotfish_requests_total == %d" % REQUESTS)
        # Rates over [1m] need two samples: wait (bounded) until Prometheus has them.
        h.wait_for(lambda: get("query", query="rate(pilotfish_requests_total[1m])")["data"]["result"], 30,
                   interval=0.2, what="two scrapes of pilotfish")

        queries = dashboard_queries()
        self.assertGreaterEqual(len(queries), 10, "the dashboard's panels")
        with_data = {}
        for q in queries:
            # Grafana's variables, as Grafana would fill them in.
            q = q.replace("$__rate_interval", "1m").replace("$__interval", "15s")
            doc = get("query", query=q)
            self.assertEqual(doc["status"], "success", (q, doc))
            with_data[q] = bool(doc["data"]["result"])
        for q in ("sum by (cluster) (rate(pilotfish_requests_total[1m]))",
                  "histogram_quantile(0.5, sum by (cluster, le) (rate(pilotfish_request_duration_seconds_bucket[1m])))",
                  "sum by (cluster) (pilotfish_endpoints_ejected)",
                  "sum by (listener) (pilotfish_downstream_connections)"):
            self.assertTrue(with_data.get(q), "no data for %s (queries: %r)" % (q, with_data))
        prom.terminate()
        self.assertEqual(prom.wait(20), 0, prometheus_log())
        pf.stop_and_check(self)


if __name__ == "__main__":
    h.main()
