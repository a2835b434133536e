#!/usr/bin/env python3
"""examples/shop's services: each with a database only it opens, and payments event-sourced
(every deposit and payment an appended event; balances derived from the events; replaying the
log after a restart rebuilds exactly the state the service had), and shop.py's scenario: a
canary of recommendations v2 at 10%, 50% and 100% by editing the gateway's YAML, one trace id
through gateway, payments and users, an outage, a rollback, a rate limit rolled out, and the
metrics that show it."""

import json
import os
import sqlite3
import subprocess
import sys
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SHOP = os.path.join(h.ROOT, "examples", "shop")


class Service:
    def __init__(self, name, db, extra=()):
        self.port = h.free_port()
        self.db = db
        self.proc = h.spawn([sys.executable, os.path.join(SHOP, name + ".py"), "--port", str(self.port), "--db", db]
                            + list(extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
        h.wait_for(lambda: self.port in h.listening_ports(), 10, what=name + " to listen")

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self):
        h.kill_proc(self.proc)


class ShopServicesTest(unittest.TestCase):
    def setUp(self):
        self.dir = h.make_tmpdir("pf-shop-")

    def service(self, name, extra=()):
        s = Service(name, os.path.join(self.dir, name + ".db"), extra)
        self.addCleanup(s.stop)
        return s

    def test_payments_are_event_sourced_and_replay_rebuilds_the_state(self):
        p = self.service("payments")
        self.assertEqual(p.call("POST", "/api/payments/deposits", {"account": "alice", "amount": 500})[0], 201)
        self.assertEqual(p.call("POST", "/api/payments/deposits", {"account": "bob", "amount": 80})[0], 201)
        self.assertEqual(p.call("POST", "/api/payments", {"account": "alice", "amount": 120})[0], 201)
        status, body = p.call("POST", "/api/payments", {"account": "bob", "amount": 100})
        self.assertEqual(status, 409, body)  # 80 < 100: refused, and no event
        self.assertEqual(p.call("POST", "/api/payments", {"account": "bob", "amount": -5})[0], 400)
        self.assertEqual(p.call("GET", "/api/payments/balances/alice")[1]["balance"], 380)
        self.assertEqual(p.call("GET", "/api/payments/balances/bob")[1]["balance"], 80)
        events = p.call("GET", "/api/payments/events")[1]["events"]
        self.assertEqual([(e["account"], e["kind"], e["amount"]) for e in events],
                         [("alice", "deposit", 500), ("bob", "deposit", 80), ("alice", "payment", 120)])
        # The state is nowhere but in the log: the database holds only events.
        tables = [r[0] for r in sqlite3.connect(p.db).execute("SELECT name FROM sqlite_master WHERE type='table' "
                                                               "AND name NOT LIKE 'sqlite_%'")]
        self.assertEqual(tables, ["events"])
        p.stop()
        # Replaying the log, offline, gives the balances the service answered.
        out = subprocess.run([sys.executable, os.path.join(SHOP, "payments.py"), "--db", p.db, "--replay"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(json.loads(out.stdout), {"alice": 380, "bob": 80})
        # A restarted service rebuilds its projection from the log and goes on from there.
        p2 = Service("payments", p.db)
        self.addCleanup(p2.stop)
        self.assertEqual(p2.call("GET", "/api/payments/balances/alice")[1]["balance"], 380)
        self.assertEqual(p2.call("POST", "/api/payments", {"account": "alice", "amount": 380})[0], 201)
        self.assertEqual(p2.call("GET", "/api/payments/balances/alice")[1]["balance"], 0)
        self.assertEqual(len(p2.call("GET", "/api/payments/events")[1]["events"]), 4)

    def test_each_service_has_its_own_database(self):
        users = self.service("users")
        recs = self.service("recommendations")
        pay = self.service("payments", ["--users", "http://127.0.0.1:%d" % users.port])
        self.assertEqual(users.call("GET", "/api/users/alice"), (200, {"id": "alice", "name": "Alice"}))
        self.assertEqual(users.call("GET", "/api/users/zed")[0], 404)
        self.assertEqual(recs.call("GET", "/api/recommendations/alice")[1]["items"], ["teapot", "cups"])
        # payments asks users (over HTTP, never its database) whether an account exists.
        self.assertEqual(pay.call("POST", "/api/payments/deposits", {"account": "alice", "amount": 10})[0], 201)
        self.assertEqual(pay.call("POST", "/api/payments", {"account": "zed", "amount": 1})[0], 422)
        self.assertEqual(pay.call("POST", "/api/payments", {"account": "alice", "amount": 10})[0], 201)
        files = sorted(f for f in os.listdir(self.dir) if f.endswith(".db"))
        self.assertEqual(files, ["payments.db", "recommendations.db", "users.db"])


class ShopScenarioTest(unittest.TestCase):
    """examples/shop/shop.py: the whole shop in network namespaces, with mTLS between all
    sidecars and interception, and its scenario (needs root; fails loudly without)."""

    def test_the_shop_scenario(self):
        if os.geteuid() != 0:
            raise AssertionError("the shop scenario needs root for network namespaces")
        report = os.path.join(h.make_tmpdir("pf-shop-run-"), "steps.json")
        before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
        r = subprocess.run([sys.executable, os.path.join(SHOP, "shop.py"), "--pilotfish", h.BIN, "--json", report],
                           capture_output=True, text=True, timeout=300)
        sys.stderr.write(r.stdout)
        with open(report) as f:
            result = json.load(f)
        failed = [s for s in result["steps"] if not s["ok"]]
        self.assertEqual(r.returncode, 0, "%s\n%s\n%s" % (failed, r.stderr[-2000:], json.dumps(result["logs"])[-4000:]))
        self.assertEqual(len(result["steps"]), 16)
        # The canary's three stages, each one edit of the gateway's YAML, each measured by the
        # client and in the gateway's metrics (shop.py's step checks both).
        stages = [s["step"].split(":")[0] for s in result["steps"] if s["step"].startswith("canary at ")]
        self.assertEqual(stages, ["canary at 10%", "canary at 50%", "canary at 100%"])
        # One trace id in the gateway's, payments' (in and out) and users' access logs.
        traced = [s for s in result["steps"] if s["step"].startswith("one trace through the hops")]
        self.assertEqual([s["ok"] for s in traced], [True])
        for log in result["logs"].values():
            self.assertNotIn("ERROR: AddressSanitizer", log)
            self.assertNotIn("runtime error:", log)
        after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
        self.assertFalse({n for n in after - before if n.startswith("shop")}, "namespaces left behind")


if __name__ == "__main__":
    h.main()
