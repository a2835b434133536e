#!/usr/bin/env python3
"""Lifecycle: a graceful drain under load (clients that honour `connection: close` see no failed
request, exit 0), drain_delay (still accepting, every response `connection: close`, then
refusing), outbound intercept listeners accepting until the process exits, and startup ordering
(wait_for_clusters keeps /ready at 503 until the cluster accepts; `pilotfish wait-ready`)."""

import os
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def ready_status(pf):
    return h.admin_request(pf, "/ready", timeout=5)[0]


def has_close(r):
    return "close" in (r.header("connection") or "").lower()


# ---------------------------------------------------------------------------------------------
# 1. SIGTERM under load
# ---------------------------------------------------------------------------------------------

class DrainClient(threading.Thread):
    """Keep-alive GETs in a loop, as a well-behaved HTTP client does them: a response with
    `connection: close` ends the connection and the next request goes on a new one; a reused
    connection closed before any byte of a response (the server closed it as idle while the
    request was on its way) is retried once on a new connection. After the drain began, a refused
    connection (or one closed before any byte of a response) means the listener stopped accepting:
    the client stops there, which is expected. Anything else is a failure."""

    def __init__(self, port, n, draining, deadline):
        super().__init__(daemon=True)
        self.port, self.n, self.draining, self.deadline = port, n, draining, deadline
        self.ok = 0
        self.failures = []
        self.responses = []  # (time the request was sent, had connection: close)
        self.close_responses = 0
        self.idle_closed = 0
        self.refused = False

    def run(self):
        seq = 0
        while time.monotonic() < self.deadline:
            try:
                c = h.Client(self.port, timeout=5)
            except ConnectionRefusedError:
                if self.draining.is_set():
                    self.refused = True
                else:
                    self.failures.append("connection refused before the drain")
                return
            except OSError as e:
                self.failures.append("connect: %r" % e)
                return
            try:
                reused = False
                while time.monotonic() < self.deadline:
                    seq += 1
                    t_sent = time.monotonic()
                    try:
                        c.send(h.build_request("GET", "/slow?ms=5&c=%d&s=%d" % (self.n, seq)))
                        r = c.read_response(timeout=5)
                    except (h.Closed, ConnectionResetError, BrokenPipeError) as e:
                        nothing = not c.buf and (not isinstance(e, h.Closed) or
                                                 str(e).startswith("connection closed before a response"))
                        if nothing and self.draining.is_set():
                            if reused:
                                self.idle_closed += 1  # retry once on a new connection
                                break
                            self.refused = True  # a new connection the closing listener dropped
                            return
                        self.failures.append("request %d (reused=%s): %s: %s" % (seq, reused, type(e).__name__, e))
                        return
                    if r.status != 200:
                        self.failures.append("request %d: %r" % (seq, r))
                        return
                    self.ok += 1
                    close = has_close(r)
                    self.responses.append((t_sent, close))
                    if close:
                        self.close_responses += 1
                        if not c.is_closed(2):
                            self.failures.append("request %d: connection: close, but the connection stayed open" % seq)
                            return
                        break
                    reused = True
            except Exception as e:
                self.failures.append("request %d: %s: %s" % (seq, type(e).__name__, e))
                return
            finally:
                c.close()
        self.failures.append("still running at the deadline")


class DrainUnderLoadTest(unittest.TestCase):
    def test_sigterm_under_load_no_failed_request(self):
        u = h.Upstream("light", name="app")
        self.addCleanup(u.stop)
        policy = h.simple_policy(u, workers=2)
        policy["drain_timeout"] = "10s"
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        port = pf.port()

        draining = threading.Event()
        clients = [DrainClient(port, i, draining, time.monotonic() + 30) for i in range(4)]
        for c in clients:
            c.start()
        time.sleep(1.5)
        self.assertTrue(all(c.ok > 10 for c in clients), [c.ok for c in clients])
        self.assertEqual([f for c in clients for f in c.failures], [])
        before = sum(c.ok for c in clients)

        draining.set()
        t0 = time.monotonic()
        pf.send_signal(signal.SIGTERM)
        rc = pf.proc.wait(12)
        elapsed = time.monotonic() - t0
        for c in clients:
            c.join(10)
            self.assertFalse(c.is_alive())

        self.assertEqual([f for c in clients for f in c.failures], [], "failed requests during the drain")
        self.assertEqual(rc, 0, pf.log())
        self.assertNotIn("drain timeout passed", pf.log(last=1 << 30), "the drain ended with the last connection")
        self.assertTrue(all(c.refused for c in clients), "every client ends at a listener that stopped accepting")
        # From the start of the drain, every response carries connection: close (a request sent
        # 300 ms after SIGTERM is well inside the drain).
        late = [(t - t0, close) for c in clients for t, close in c.responses if t > t0 + 0.3]
        self.assertEqual([x for x in late if not x[1]], [], "responses without connection: close during the drain")
        # Each client left its last connection through a response with connection: close. An
        # idle connection is not closed under a request on its way (pilotfish waits a 1 s grace
        # for it), so no client had to retry one.
        for c in clients:
            self.assertGreaterEqual(c.close_responses, 1)
        self.assertEqual([c.idle_closed for c in clients], [0] * len(clients), "reused connections closed under a request")
        self.assertGreater(sum(c.ok for c in clients), before)
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# 2. drain_delay
# ---------------------------------------------------------------------------------------------

class DrainDelayTest(unittest.TestCase):
    def test_drain_delay_keeps_accepting_then_refuses(self):
        u = h.Upstream("echo", name="app")
        self.addCleanup(u.stop)
        policy = h.simple_policy(u, workers=2, cluster={"timeout": "10s"})
        policy["drain_delay"] = "1s"
        policy["drain_timeout"] = "10s"
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        port = pf.port()

        idle = h.Client(port, timeout=5)
        self.addCleanup(idle.close)
        r = idle.request("GET", "/idle")
        self.assertEqual(r.status, 200)
        self.assertFalse(has_close(r))
        racing = h.Client(port, timeout=5)  # idle too, but sends its next request as the drain begins
        self.addCleanup(racing.close)
        self.assertEqual(racing.request("GET", "/racing-1").status, 200)
        slow = h.Client(port, timeout=10)
        self.addCleanup(slow.close)
        slow.send(h.build_request("GET", "/slow?ms=2500"))  # holds the drain past the delay
        u.wait_requests(3)
        self.assertEqual(ready_status(pf), 200)

        t0 = time.monotonic()
        status, _, body = h.admin_request(pf, "/drain", "POST")
        self.assertEqual(status, 202, body)
        self.assertEqual(ready_status(pf), 503, "/ready answers 503 at once")
        # An idle connection is not cut under a request the client may be sending right now: it
        # is answered, with connection: close.
        r = racing.request("GET", "/racing-2")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(has_close(r), r)
        self.assertTrue(racing.is_closed(2))

        # During the delay: new connections are accepted and answered, with connection: close.
        for at in (0.2, 0.5):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            with h.Client(port, timeout=5) as c:
                r = c.request("GET", "/during-delay")
                self.assertEqual(r.status, 200, r)
                self.assertTrue(has_close(r), r)
                self.assertTrue(c.is_closed(2))
        self.assertTrue(pf.alive())
        # An idle keep-alive connection that sends nothing is closed after the 1 s grace.
        self.assertTrue(idle.is_closed(max(0.1, t0 + 1.6 - time.monotonic())),
                        "an idle keep-alive connection is closed within 1 s of the drain's start")

        # After the delay: refused.
        time.sleep(max(0.0, t0 + 1.4 - time.monotonic()))
        self.assertTrue(h.connect_refused(port), "after drain_delay the listener stops accepting")
        self.assertEqual(ready_status(pf), 503)
        self.assertTrue(pf.alive(), "the request in flight holds the process")

        r = slow.read_response(timeout=10)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(has_close(r))
        self.assertEqual(pf.proc.wait(8), 0, pf.log())
        self.assertNotIn("drain timeout passed", pf.log(last=1 << 30), "exit follows the last connection")
        self.assertEqual([r["target"] for r in u.requests()],
                         ["/idle", "/racing-1", "/slow?ms=2500", "/racing-2", "/during-delay", "/during-delay"])
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# 3. An outbound intercept listener accepts until the process exits
# ---------------------------------------------------------------------------------------------

class DrainCommandTest(unittest.TestCase):
    def test_pilotfish_drain_is_a_prestop_hook(self):
        # `pilotfish drain` POSTs /drain: /ready turns 503 at once, then the process exits 0.
        u = h.Upstream("echo", name="app")
        self.addCleanup(u.stop)
        policy = h.simple_policy(u)
        policy["drain_delay"] = "1s"
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        self.assertEqual(ready_status(pf), 200)
        rc, out, err = h.run_cli(["drain", "--admin", "127.0.0.1:%d" % h.admin_port(pf)], timeout=10)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("is draining", out)
        self.assertEqual(ready_status(pf), 503)
        self.assertEqual(pf.proc.wait(10), 0)
        rc, out, err = h.run_cli(["drain", "--admin", "127.0.0.1:%d" % h.free_port()], timeout=10)
        self.assertEqual(rc, 1, "nothing listens there: " + out + err)
        rc, out, err = h.run_cli(["drain", "--config", pf.config, "--timeout", "1s"], timeout=10)
        self.assertEqual(rc, 2, out + err)


class OutboundDuringDrainTest(unittest.TestCase):
    def test_outbound_listener_accepts_during_drain(self):
        u = h.Upstream("echo", name="app")
        self.addCleanup(u.stop)
        policy = h.simple_policy(u, workers=2, cluster={"timeout": "10s"})
        policy["listeners"][0]["name"] = "inbound"
        policy["listeners"].append({"name": "outbound", "address": "127.0.0.1:0", "intercept": "outbound",
                                    "routes": [{"cluster": "app"}]})
        policy["drain_timeout"] = "10s"
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        inbound, outbound = pf.port("inbound"), pf.port("outbound")

        slow = h.Client(inbound, timeout=10)
        self.addCleanup(slow.close)
        slow.send(h.build_request("GET", "/slow?ms=5000"))  # in flight through every request below
        u.wait_requests(1)

        t0 = time.monotonic()
        pf.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        self.assertTrue(h.connect_refused(inbound), "the inbound listener stops accepting (drain_delay 0)")
        self.assertEqual(ready_status(pf), 503)
        n = 0
        for at in (0.4, 1.2, 2.0, 2.6):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            with h.Client(outbound, timeout=5) as c:
                r = c.request("GET", "/outbound-%d" % n)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["target"], "/outbound-%d" % n)
                self.assertTrue(has_close(r), r)
                self.assertTrue(c.is_closed(2))
            n += 1
        self.assertTrue(pf.alive(), "the slow request holds the process")

        r = slow.read_response(timeout=10)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(has_close(r))
        self.assertEqual(pf.proc.wait(5), 0, pf.log())
        self.assertTrue(h.connect_refused(outbound))
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# 4. wait_for_clusters and `pilotfish wait-ready`
# ---------------------------------------------------------------------------------------------

class WaitForClustersTest(unittest.TestCase):
    def test_ready_waits_for_cluster_and_wait_ready_cli(self):
        app_port = h.free_port()
        admin_port = h.free_port()
        policy = h.simple_policy("127.0.0.1:%d" % app_port, workers=2)
        policy["admin"] = {"address": "127.0.0.1:%d" % admin_port}
        policy["wait_for_clusters"] = ["app"]
        pf = h.Pilotfish(policy)  # `pilotfish ready` is logged once listeners are bound
        self.addCleanup(pf.kill)
        self.assertEqual(h.admin_port(pf), admin_port)

        for _ in range(4):
            self.assertEqual(ready_status(pf), 503, "no endpoint of app accepts yet")
            time.sleep(0.1)

        # Never ready within the timeout: exit 1 with a message, after about the timeout.
        t0 = time.monotonic()
        rc, out, err = h.run_cli(["wait-ready", "--config", pf.config, "--timeout", "1s"], timeout=10)
        elapsed = time.monotonic() - t0
        self.assertEqual(rc, 1, out + err)
        self.assertNotEqual((out + err).strip(), "", "wait-ready says why it gave up")
        self.assertGreaterEqual(elapsed, 0.9, "it gave up before its timeout")
        rc, out, err = h.run_cli(["wait-ready", "--admin", "127.0.0.1:%d" % h.free_port(), "--timeout", "1s"],
                                 timeout=10)
        self.assertEqual(rc, 1, "nothing listens on that admin address: " + out + err)
        self.assertNotEqual((out + err).strip(), "")
        self.assertEqual(ready_status(pf), 503)
        # --path /live (the container health check): live while not ready.
        rc, out, err = h.run_cli(["wait-ready", "--config", pf.config, "--path", "/live", "--timeout", "2s"], timeout=10)
        self.assertEqual(rc, 0, out + err)
        self.assertIn("/live: 200", out)
        rc, out, err = h.run_cli(["wait-ready", "--config", pf.config, "--path", "/metrics"], timeout=10)
        self.assertEqual(rc, 2, out + err)

        waiter = h.spawn([h.BIN, "wait-ready", "--config", pf.config, "--timeout", "5s"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.addCleanup(h.kill_proc, waiter)
        time.sleep(0.5)
        self.assertIsNone(waiter.poll(), "wait-ready must wait while /ready is 503")

        u = h.Upstream("echo", name="app", extra=["--port", str(app_port)])
        self.addCleanup(u.stop)
        self.assertEqual(u.port, app_port)
        h.wait_for(lambda: ready_status(pf) == 200, 2.0, interval=0.05, what="/ready 200 once app accepts")
        try:
            out, err = waiter.communicate(timeout=4)
        except subprocess.TimeoutExpired:
            raise AssertionError("wait-ready did not exit after the sidecar became ready")
        self.assertEqual(waiter.returncode, 0, out + err)

        rc, out, err = h.run_cli(["wait-ready", "--admin", "127.0.0.1:%d" % admin_port, "--timeout", "5s"])
        self.assertEqual(rc, 0, out + err)
        rc, out, err = h.run_cli(["wait-ready", "--config", pf.config])
        self.assertEqual(rc, 0, out + err)
        r = h.request(pf.port(), "GET", "/through")
        self.assertEqual(r.status, 200, r)
        pf.stop_and_check(self)

    def test_reload_before_the_app_is_up_changes_what_ready_waits_for(self):
        app_port = h.free_port()
        policy = h.simple_policy("127.0.0.1:%d" % app_port, workers=1)
        policy["wait_for_clusters"] = ["app"]
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        self.assertEqual(ready_status(pf), 503)
        # The app moved: the new policy waits for a cluster at another port, where it listens.
        u = h.Upstream("echo", name="app2")
        self.addCleanup(u.stop)
        moved = h.simple_policy(u, workers=1)
        moved["clusters"][0]["name"] = "app2"
        moved["listeners"][0]["routes"] = [{"cluster": "app2"}]
        moved["wait_for_clusters"] = ["app2"]
        h.write_policy(pf, moved)
        status, doc, _ = h.admin_json(pf, "/reload", "POST")
        self.assertEqual((status, doc["outcome"]), (200, "applied"), doc)
        h.wait_for(lambda: ready_status(pf) == 200, 2.0, interval=0.05, what="/ready 200 once app2 accepts")
        pf.stop_and_check(self)


if __name__ == "__main__":
    h.main()
