#!/usr/bin/env python3
"""Interception must not be a way around `auth`: on an intercept listener that checks requests,
a request line that arrives late, in pieces or after empty lines still goes through the HTTP
path (401 without a token), bytes that are not HTTP are refused, and a destination no cluster
claims is refused rather than passed through. A reload that moves the listener while a
connection is still being classified does not crash the process.

Runs in a private network namespace (`unshare -n`, as root) with its own REDIRECT rule, so the
machine's rules are never touched; fails loudly where that cannot be made."""

import json
import os
import shutil
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

INNER = "--inner"


def inner():
    """The checks, inside the private namespace. Prints a JSON report."""
    import test_gateway as g
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    d = h.make_tmpdir("pf-icpt-")
    keys = g.Keys(d)
    jwks = os.path.join(d, "jwks.json")
    with open(jwks, "w") as f:
        json.dump({"keys": [keys.jwk_rsa()]}, f)
    up = h.Upstream("echo")
    app = up.port
    other = h.free_port()
    policy = {"version": 1, "service": "icpt", "admin": {"address": "127.0.0.1:0"}, "workers": 1, "access_log": "off",
              "listeners": [{"name": "inbound", "address": "0.0.0.0:15006", "intercept": "inbound",
                             "auth": {"jwks": jwks, "subject_header": "x-user"}, "routes": [{"cluster": "app"}]}],
              "clusters": [{"name": "app", "endpoints": ["127.0.0.1:%d" % app]}]}
    pf = h.Pilotfish(policy)
    # Connections to 127.0.0.2 (the "pod address") are redirected as `pilotfish iptables` does.
    for port in (app, other):
        subprocess.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.2", "--dport", str(port),
                        "-j", "REDIRECT", "--to-ports", "15006"], check=True)
    req = h.build_request("GET", "/secret", headers=[("x-user", "admin")])
    report = {}

    def attempt(label, chunks, port=app):
        with h.Client(port, host="127.0.0.2", timeout=3) as c:
            try:
                for delay, data in chunks:
                    time.sleep(delay)
                    c.send(data)
                report[label] = c.read_response().status
            except (h.Closed, h.Timeout, OSError) as e:
                report[label] = "closed" if not isinstance(e, h.Timeout) else "timeout"

    attempt("at once", [(0, req)])
    attempt("400 ms late", [(0.4, req)])
    attempt("G, then the rest 400 ms later", [(0, req[:1]), (0.4, req[1:])])
    attempt("lower-case get", [(0, b"get" + req[3:])])
    attempt("leading CRLF", [(0, b"\r\n" + req)])
    attempt("unclaimed port", [(0, req)], port=other)
    attempt("a few empty lines", [(0, b"\r\n\r\n\r\n" + req)])
    # Connections that send nothing but empty lines are not HTTP: closed on this listener,
    # while an honest request beside them is answered.
    floods = [h.Client(app, host="127.0.0.2", timeout=3) for _ in range(20)]
    for f in floods:
        try:
            f.send(b"\r\n" * 8192)
        except OSError:
            pass
    attempt("beside 20 CRLF floods", [(0, req)])
    report["floods closed"] = sum(1 for f in floods if f.is_closed(3))
    for f in floods:
        f.close()
    report["app requests"] = len(up.requests())
    # A connection still being classified when a reload moves the listener.
    c = h.Client(app, host="127.0.0.2", timeout=3)
    c.send(b"G")
    time.sleep(0.05)
    policy["listeners"][0]["address"] = "0.0.0.0:15007"
    h.write_policy(pf, policy)
    report["reload"] = h.admin_json(pf, "/reload", method="POST")[1]["outcome"]
    time.sleep(0.5)
    c.close()
    report["alive after reload"] = pf.alive()
    report["exit code"] = pf.stop()
    up.stop()
    print(json.dumps(report))


class InterceptChecksTest(unittest.TestCase):
    def test_interception_is_no_way_around_auth(self):
        if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("iptables"):
            raise AssertionError("needs root, unshare and iptables (scripts/install-deps.sh installs them)")
        r = subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__), INNER], capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        report = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(report["at once"], 401, report)
        self.assertEqual(report["400 ms late"], 401, report)
        self.assertEqual(report["G, then the rest 400 ms later"], 401, report)
        self.assertEqual(report["leading CRLF"], 401, report)
        self.assertEqual(report["lower-case get"], "closed", report)
        self.assertEqual(report["unclaimed port"], "closed", report)
        self.assertEqual(report["a few empty lines"], 401, report)
        self.assertEqual(report["beside 20 CRLF floods"], 401, report)
        self.assertEqual(report["floods closed"], 20, report)
        self.assertEqual(report["app requests"], 0, "nothing reached the app unchecked")
        self.assertEqual(report["reload"], "applied")
        self.assertTrue(report["alive after reload"])
        self.assertEqual(report["exit code"], 0)


if __name__ == "__main__":
    if INNER in sys.argv:
        inner()
    else:
        h.main()
