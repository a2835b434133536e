#!/usr/bin/env python3
"""Live taps (issue 19): GET /tap on the admin listener and `pilotfish tap`, against the real
binary under real traffic (plain and mutual TLS clients, a dead cluster for 503s): each request's
summary as a JSON line, filtered per tap; never a body, a header value or a query string; a tap
whose reader stops reading loses events (counted), never slows the requests; a rate cap; and
`pilotfish top` under the same load."""
import json
import os
import pty
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SECRETS = ("SECRETAUTH", "SECRETCOOKIE", "SECRETQUERY", "SECRETBODY", "SECRETHEADER", "SECRETFRAG", "SECRETPASS",
           "SECRETREQID")


def sid(name):
    return "spiffe://test.local/ns/test/sa/" + name


class Tap:
    """One GET /tap on its own connection, read by the test as it goes."""

    def __init__(self, pf, query="", rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", h.admin_port(pf)))
        target = "/tap" + ("?" + query if query else "")
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: admin\r\n\r\n" % target).encode())
        self.raw = b""
        self.lines = []
        self.status = None
        self.closed = False

    def head(self, timeout=10):
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.raw:
            self._recv(deadline)
        head, _, rest = self.raw.partition(b"\r\n\r\n")
        self.status = int(head.split()[1])
        self.headers = head.decode()
        self._buffer = rest
        self._split()
        return self.status

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("the tap sent nothing more in time; so far: %r" % self.raw[-500:])
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            return
        data = self.sock.recv(1 << 16)
        if not data:
            self.closed = True
            raise AssertionError("the sidecar closed the tap")
        self.raw += data
        if self.status is not None:
            self._buffer += data
            self._split()

    def _split(self):
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines += [json.loads(line) for line in complete]

    def events(self):
        return [e for e in self.lines if "dropped" not in e]

    def wait_events(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        while len(self.events()) < n:
            self._recv(deadline)
        return self.events()

    def read_for(self, seconds):
        """Everything that comes in `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], max(0, deadline - time.monotonic()))
            if r:
                self._recv(deadline + 5)

    def close(self):
        self.sock.close()


class Load:
    """Keep-alive requests from a thread, `count` at most, for at most `seconds`."""

    def __init__(self, port, target="/bulk/load", count=100000, seconds=30.0):
        self.statuses = []
        self.stop = threading.Event()

        def run():
            deadline = time.monotonic() + seconds
            with h.Client(port, timeout=10) as c:
                while len(self.statuses) < count and not self.stop.is_set() and time.monotonic() < deadline:
                    self.statuses.append(c.request(target=target).status)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self, stop=True):
        """The statuses seen: once stopped now, or (stop=False) once the count or time is up."""
        if stop:
            self.stop.set()
        self.thread.join(90)
        return self.statuses


class TapTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = h.make_tmpdir("pf-tap-")
        cls.pki = h.Pki(os.path.join(cls.dir, "pki"))
        cls.server = cls.pki.leaf("server", uris=[sid("server")])
        cls.client = cls.pki.leaf("client", uris=[sid("client")])
        cls.app = h.Upstream("echo", name="app")
        cls.bulk = h.Upstream("light", name="bulk")  # for load: keeps no record per request
        dead = "127.0.0.1:%d" % h.free_port()
        policy = h.simple_policy(cls.app, workers=2, routes=[
            {"name": "api", "match": {"path_prefix": "/api/"}, "cluster": "app"},
            {"name": "bulk", "match": {"path_prefix": "/bulk/"}, "cluster": "bulk"},
            {"name": "down", "match": {"path_prefix": "/down/"}, "cluster": "dead"},
            {"name": "web", "cluster": "app"}])
        policy["clusters"].append({"name": "dead", "endpoints": [dead], "connect_timeout": "1s"})
        policy["clusters"].append({"name": "bulk", "endpoints": [cls.bulk.address]})
        policy["listeners"].append({"name": "secure", "address": "127.0.0.1:0", "mtls": True,
                                    "routes": [{"name": "secure", "cluster": "app"}]})
        policy["identity"] = {"cert": cls.server[0], "key": cls.server[1], "ca": cls.pki.cert}
        policy["admin"]["read_only_address"] = "127.0.0.1:0"
        try:
            cls.pf = h.Pilotfish(policy)
        except BaseException:
            cls.app.stop()
            cls.bulk.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            rc = cls.pf.stop()
            assert rc == 0, "exit code %s:\n%s" % (rc, cls.pf.log())
            for bad in ("handles still open", "ERROR: AddressSanitizer", "runtime error:"):
                assert bad not in cls.pf.log(last=1 << 30), bad
        finally:
            cls.pf.kill()
            cls.app.stop()
            cls.bulk.stop()

    def open_tap(self, query="", **kw):
        tap = Tap(self.pf, query, **kw)
        self.addCleanup(tap.close)
        self.assertEqual(tap.head(), 200, tap.raw)
        self.assertIn("content-type: application/x-ndjson", tap.headers)
        return tap

    def mtls_get(self, path):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(self.pki.cert)
        ctx.load_cert_chain(*self.client)
        with socket.create_connection(("127.0.0.1", self.pf.port("secure")), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(("GET %s HTTP/1.1\r\nHost: secure.local\r\nConnection: close\r\n\r\n" % path).encode())
                data = b""
                while True:
                    piece = s.recv(65536)
                    if not piece:
                        break
                    data += piece
        return int(data.split()[1])

    def taps_open(self):
        return h.sample(h.metrics(self.pf), "pilotfish_tap_streams")

    # ---------------------------------------------------------------------------------------------
    def test_events_say_what_happened_and_nothing_secret(self):
        tap = self.open_tap("rate=1000")
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        with h.Client(self.pf.port()) as c:
            r = c.request("POST", "/api/orders?token=SECRETQUERY", body=b"SECRETBODY", headers=[
                ("Authorization", "Bearer SECRETAUTH"), ("Cookie", "session=SECRETCOOKIE"),
                ("X-Api-Key", "SECRETHEADER"), ("traceparent", "00-%s-00f067aa0ba902b7-01" % trace)])
            self.assertEqual(r.status, 200)
            self.assertEqual(c.request(target="/down/x").status, 503)
        self.assertEqual(self.mtls_get("/who?token=SECRETQUERY"), 200)
        # Refused before routing: still tapped, without what the target carried.
        for target in ("/cb#access_token=SECRETFRAG", "http://user:SECRETPASS@test.local/p", "/%zz?token=SECRETQUERY"):
            with h.Client(self.pf.port()) as c:
                self.assertEqual(c.request(target=target, headers=[("X-Request-Id", "SECRETREQID")]).status, 400)
        events = tap.wait_events(6)
        by_path = {e["path"]: e for e in events}
        self.assertEqual(set(by_path), {"/api/orders", "/down/x", "/who", "/cb", "-", "/%zz"})
        self.assertEqual(by_path["/cb"]["status"], 400)
        post = by_path["/api/orders"]
        self.assertEqual({k: post[k] for k in ("listener", "route", "method", "authority", "status", "cluster",
                                               "endpoint", "attempts", "peer", "error", "trace_id")},
                         {"listener": "ingress", "route": "api", "method": "POST", "authority": "test.local",
                          "status": 200, "cluster": "app", "endpoint": self.app.address, "attempts": 1,
                          "peer": "", "error": "", "trace_id": trace})
        self.assertNotIn("request_id", post)  # a client may send its own x-request-id
        self.assertTrue(0 < post["duration"] < 10, post)
        self.assertRegex(post["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        down = by_path["/down/x"]
        self.assertEqual((down["status"], down["route"], down["cluster"]), (503, "down", "dead"))
        self.assertEqual(down["error"], "connect_failure", down)
        self.assertEqual(len(down["trace_id"]), 32)  # a new trace
        secure = by_path["/who"]
        self.assertEqual((secure["listener"], secure["peer"], secure["authority"]), ("secure", sid("client"), "secure.local"))
        for secret in SECRETS:
            self.assertNotIn(secret.encode(), tap.raw)

    def test_filters(self):
        taps = {
            "errors": self.open_tap("status=5xx"),
            "posts under /api": self.open_tap("method=POST&path_prefix=%2Fapi%2F"),
            "secure listener": self.open_tap("listener=secure"),
            "route web, 200": self.open_tap("route=web&status=200"),
            "cluster dead": self.open_tap("cluster=dead"),
        }
        with h.Client(self.pf.port()) as c:
            for method, path, status in (("GET", "/api/a", 200), ("POST", "/api/b", 200), ("POST", "/apix", 200),
                                         ("GET", "/down/1", 503), ("POST", "/down/2", 503), ("GET", "/web", 200),
                                         ("GET", "/status/404", 404), ("GET", "/status/502", 502)):
                self.assertEqual(c.request(method, path, body=b"" if method == "POST" else None).status, status)
        self.assertEqual(self.mtls_get("/s"), 200)
        expected = {
            "errors": ["/down/1", "/down/2", "/status/502"],
            "posts under /api": ["/api/b"],
            "secure listener": ["/s"],
            "route web, 200": ["/apix", "/web"],
            "cluster dead": ["/down/1", "/down/2"],
        }
        for name, tap in taps.items():
            got = sorted(e["path"] for e in tap.wait_events(len(expected[name])))
            tap.read_for(0.5)  # nothing else comes
            self.assertEqual(sorted(e["path"] for e in tap.events()), expected[name], name)
            self.assertEqual(got, expected[name], name)
        for tap in taps.values():
            tap.close()
        # Closed taps are let go: no tap open, nothing more to publish.
        h.wait_for(lambda: self.taps_open() == 0, 10, what="tap_streams back to 0")

    def test_refusals(self):
        h.wait_for(lambda: self.taps_open() == 0, 10, what="the other tests' taps let go")
        for query, why in (("colour=red", "the filters are listener"), ("status=6xx", "status is a class"),
                           ("status=20", "status is a class"), ("rate=0", "rate is events a second"),
                           ("rate=20000", "rate is events a second"), ("route=a&route=b", "given twice: route"),
                           ("path_prefix=api", "starts with '/'"), ("route=%zz", "percent-encoded")):
            status, _, body = h.admin_request(self.pf, "/tap?" + query)
            self.assertEqual((status, why in body), (400, True), (query, body))
        status, headers, body = h.admin_request(self.pf, "/tap", method="HEAD")
        self.assertEqual((status, body), (200, ""))
        status, headers, _ = h.admin_request(self.pf, "/tap", method="POST")
        self.assertEqual((status, headers.get("allow")), (405, "GET, HEAD"))
        # The read-only address (the kubelet's, Prometheus's) has no tap.
        port = int(h.wait_log(self.pf, r"read-only admin \([^)]*\) on 127\.0\.0\.1:(\d+)").group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /tap HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 404"))
        # Eight taps at most: the ninth is refused, and taken once one closes.
        taps = [self.open_tap() for _ in range(8)]
        status, _, body = h.admin_request(self.pf, "/tap")
        self.assertEqual(status, 503)
        self.assertIn("8 taps are open", body)
        taps[0].close()
        h.wait_for(lambda: self.taps_open() == 7, 10, what="a tap let go")
        self.open_tap()

    def test_a_reader_that_stops_loses_events_not_requests(self):
        """One tap is never read (a small receive buffer, full), one is capped at 5 events a
        second; the requests under load are all answered, the stopped tap's events are dropped
        and counted, and the capped one says how many it left out."""
        before = h.metrics(self.pf)
        stuck = self.open_tap("rate=10000", rcvbuf=4096)
        capped = self.open_tap("rate=5")
        long_path = "/bulk/" + "p" * 2500  # a big event: the stuck tap fills sooner
        load = Load(self.pf.port(), target=long_path, count=3000, seconds=60)
        started = time.monotonic()
        capped.read_for(3)
        statuses = load.finish(stop=False)
        elapsed = time.monotonic() - started
        capped.read_for(0.5)
        seen_capped = len(capped.events())
        self.assertGreater(len(statuses), 1000)
        self.assertEqual(set(statuses), {200})
        # 5 a second, and a burst of one second's worth.
        self.assertLessEqual(seen_capped, 5 + 5 * (elapsed + 1))
        self.assertGreater(seen_capped, 0)

        def counted():
            m = h.metrics(self.pf)
            d = (h.sample(m, "pilotfish_tap_events_total", result="dropped") or 0) - \
                (h.sample(before, "pilotfish_tap_events_total", result="dropped") or 0)
            o = (h.sample(m, "pilotfish_tap_events_total", result="over_rate") or 0) - \
                (h.sample(before, "pilotfish_tap_events_total", result="over_rate") or 0)
            return (d, o) if d > 0 and o > 0 else None
        dropped, over_rate = h.wait_for(counted, 10, what="dropped and over-rate events counted")
        self.assertGreaterEqual(over_rate, len(statuses) - (5 + 5 * (elapsed + 1)))
        self.assertTrue(any(e.get("over_rate", 0) > 0 for e in capped.lines if "dropped" in e), capped.lines[-3:])
        # The stuck tap, read at last: what it held, then the count of what it lost.
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        deadline = time.monotonic() + 20
        while not any("dropped" in e for e in stuck.lines):
            stuck._recv(deadline)
        lost = sum(e["dropped"] for e in stuck.lines if "dropped" in e)
        self.assertGreater(lost, 0)
        self.assertLess(len(stuck.events()), len(statuses))
        self.assertEqual(set(e["status"] for e in stuck.events()), {200})

    def test_tap_and_top_commands_under_load(self):
        h.wait_for(lambda: self.taps_open() == 0, 10, what="the other tests' taps let go")
        admin = "127.0.0.1:%d" % h.admin_port(self.pf)
        load = Load(self.pf.port(), target="/bulk/cli", count=20000, seconds=60)
        self.addCleanup(load.finish)
        r = subprocess.run([h.BIN, "tap", "--admin", admin, "--path-prefix", "/bulk/", "--count", "5"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 5, r.stdout)
        for line in lines:
            self.assertRegex(line, r"^\d\d:\d\d:\d\d\.\d{3}  GET test\.local/bulk/cli  200 [\d.]+ ms  route=bulk  -> bulk "
                             r"127\.0\.0\.1:\d+  trace=[0-9a-f]{32}$")
        self.assertNotIn("\033", r.stdout)  # not a terminal: no colour
        r = subprocess.run([h.BIN, "tap", "--admin", admin, "--route", "bulk", "--count", "3", "--json"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([json.loads(line)["route"] for line in r.stdout.splitlines()], ["bulk"] * 3)
        # On a terminal, the status in colour.
        master, slave = pty.openpty()
        try:
            p = subprocess.run([h.BIN, "tap", "--admin", admin, "--count", "2"], stdout=slave,
                               stderr=subprocess.PIPE, timeout=30, env=dict(os.environ, TERM="xterm"))
            os.close(slave)
            slave = None
            out = b""
            while select.select([master], [], [], 1)[0]:
                try:
                    piece = os.read(master, 65536)
                except OSError:
                    break
                if not piece:
                    break
                out += piece
        finally:
            if slave is not None:
                os.close(slave)
            os.close(master)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"\033[32m200\033[0m", out)
        # top, while the load runs: the bulk route leads.
        r = subprocess.run([h.BIN, "top", "--admin", admin, "--once"], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[2].split()[:3], ["ingress", "bulk", "bulk"])
        statuses = load.finish()
        self.assertEqual(set(statuses), {200})
        # Refusals: the sidecar's reason, exit 1; a bad flag, exit 2; nobody there, exit 1.
        r = subprocess.run([h.BIN, "tap", "--admin", admin, "--status", "9xx"], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 1)
        self.assertIn("answered 400: 400 bad_request: status is a class", r.stderr)
        r = subprocess.run([h.BIN, "tap", "--admin", admin, "--colour", "red"], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown argument '--colour' for tap", r.stderr)
        r = subprocess.run([h.BIN, "tap", "--admin", "127.0.0.1:%d" % h.free_port()], capture_output=True, text=True,
                           timeout=20)
        self.assertEqual(r.returncode, 1)
        self.assertIn("pilotfish tap: GET /tap at 127.0.0.1:", r.stderr)


if __name__ == "__main__":
    h.main()
