#!/usr/bin/env python3
"""Signals: SIGTERM (and SIGINT) with requests in flight drain cleanly - the requests complete,
new connections are refused, idle connections close, the process exits 0; SIGUSR1 reopens the
access-log file after a rename (log rotation)."""

import json
import os
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def refused(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except ConnectionRefusedError:
        return True
    except OSError:
        return True
    # Connected: a listener is still accepting (or the kernel queued us). Is anyone answering?
    try:
        s.sendall(b"GET /after-sigterm HTTP/1.1\r\nHost: a\r\n\r\n")
        s.settimeout(2)
        data = s.recv(100)
        return data == b""
    except OSError:
        return True
    finally:
        s.close()


class DrainTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)
        self.pf = h.Pilotfish(h.simple_policy(self.up, workers=2, cluster={"timeout": "20s"}))
        self.addCleanup(self.pf.kill)
        self.port = self.pf.port()

    def test_sigterm_with_requests_in_flight(self):
        idle = h.Client(self.port)
        self.addCleanup(idle.close)
        self.assertEqual(idle.request("GET", "/idle-before").status, 200)

        clients = []
        for i in range(4):
            c = h.Client(self.port, timeout=15)
            self.addCleanup(c.close)
            c.send(h.build_request("GET", "/slow?ms=2000&i=%d" % i))
            clients.append(c)
        self.up.wait_requests(5)  # all 4 slow requests have reached the upstream
        self.pf.send_signal(signal.SIGTERM)

        time.sleep(0.4)
        self.assertTrue(self.pf.alive(), "pilotfish must wait for the requests in flight")
        self.assertTrue(refused(self.port), "new connections must be refused while draining")
        self.assertTrue(idle.is_closed(1.5), "an idle keep-alive connection is closed when draining")

        for i, c in enumerate(clients):
            r = c.read_response(timeout=15)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["target"], "/slow?ms=2000&i=%d" % i)
        rc = self.pf.proc.wait(10)
        self.assertEqual(rc, 0, self.pf.log())
        self.assertNotIn("drain timeout passed", self.pf.log(last=1 << 30),
                         "exit should follow the last response, not the drain timeout")
        for c in clients:
            self.assertTrue(c.is_closed(2))
        self.assertTrue(refused(self.port))

    def test_sigterm_with_request_body_in_flight(self):
        c = h.Client(self.port, timeout=10)
        self.addCleanup(c.close)
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
        self.up.wait_requests(1)
        self.pf.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertTrue(self.pf.alive())
        c.send(b"56789")
        r = c.read_response(timeout=10)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["body"], "0123456789")
        self.assertEqual(self.pf.proc.wait(10), 0, self.pf.log())

    def test_sigterm_idle_exits_promptly(self):
        self.assertEqual(self.pf.stop(10), 0, self.pf.log())
        self.assertNotIn("drain timeout passed", self.pf.log(last=1 << 30), "nothing to wait for")
        self.assertTrue(refused(self.port))

    def test_sigint_drains_and_exits_0(self):
        c = h.Client(self.port, timeout=10)
        self.addCleanup(c.close)
        c.send(h.build_request("GET", "/slow?ms=800"))
        self.up.wait_requests(1)
        self.pf.send_signal(signal.SIGINT)
        r = c.read_response(timeout=10)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.pf.proc.wait(10), 0, self.pf.log())


class LogRotationTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)
        self.dir = h.make_tmpdir()
        self.log = os.path.join(self.dir, "access.log")
        self.pf = h.Pilotfish(h.simple_policy(self.up, access_log=self.log))
        self.addCleanup(self.pf.kill)

    def tearDown(self):
        self.pf.stop_and_check(self)

    @staticmethod
    def read_lines(path):
        try:
            with open(path) as f:
                return [json.loads(l) for l in f.read().splitlines() if l.strip()]
        except FileNotFoundError:
            return []

    def test_sigusr1_reopens_access_log(self):
        self.assertEqual(h.request(self.pf.port(), "GET", "/before-rotation").status, 200)
        h.wait_for(lambda: self.read_lines(self.log), 5, what="the first access-log line")
        rotated = self.log + ".1"
        os.rename(self.log, rotated)
        self.pf.send_signal(signal.SIGUSR1)
        h.wait_for(lambda: os.path.exists(self.log), 5, what="pilotfish to reopen %s after SIGUSR1" % self.log)
        self.assertEqual(h.request(self.pf.port(), "GET", "/after-rotation").status, 200)
        new = h.wait_for(lambda: self.read_lines(self.log), 5, what="a line in the reopened access log")
        old = self.read_lines(rotated)
        self.assertEqual([l["path"] for l in old], ["/before-rotation"])
        self.assertEqual([l["path"] for l in new], ["/after-rotation"])
        self.assertTrue(self.pf.alive())


if __name__ == "__main__":
    h.main()
