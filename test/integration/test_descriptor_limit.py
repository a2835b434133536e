#!/usr/bin/env python3
"""When pilotfish itself runs out of file descriptors, no healthy endpoint is blamed and every
client is told the truth. pilotfish runs with RLIMIT_NOFILE 256 (as `ulimit -n 256`) and two
workers in front of a healthy upstream that answers /slow after one second; 400 clients connect
at once. Every one of them gets an answer (200, or 503 overloaded), the endpoint is never
ejected, the admin endpoints keep answering, and once the clients leave, service is whole again.
A limit lowered while pilotfish runs (so that accept() itself fails) must not wedge a worker."""

import collections
import os
import re
import select
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

CLIENTS = 400
REQUEST = b"GET /slow?ms=1000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def burst(port, n, timeout=20.0):
    """n clients connect at once, each sends one request; the outcome of each, counted:
    "200", "503 overloaded" (status and x-pilotfish-error), or "no answer"."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    pending = set(socks)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:  # every connect completes (or fails)
        _, w, _ = select.select([], list(pending), [], 0.5)
        for s in w:
            pending.discard(s)
            try:
                s.send(REQUEST)
            except OSError:
                pass
    data = {s: b"" for s in socks}
    open_ = set(socks)
    while open_ and time.monotonic() < deadline:
        r, _, _ = select.select(list(open_), [], [], 0.5)
        for s in r:
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                open_.discard(s)
            data[s] += chunk
    outcomes = collections.Counter()
    for s in socks:
        head = data[s].split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if not head[0]:
            outcomes["no answer"] += 1
        else:
            status = head[0].split(b" ")[1].decode()
            error = [line.split(b":", 1)[1].strip().decode() for line in head[1:]
                     if line.lower().startswith(b"x-pilotfish-error:")]
            outcomes[" ".join([status] + error)] += 1
        s.close()
    return outcomes


class DescriptorExhaustionTest(unittest.TestCase):
    def setUp(self):
        self.up = h.Upstream("echo")
        self.addCleanup(self.up.stop)

    def start(self, **kw):
        # Timeouts far from the upstream's 1 s: on a loaded machine (CI runs two tests at once)
        # a request of the burst may wait seconds for a core, and its 504, or an endpoint
        # ejected for connects that took too long, would be the machine's doing, not pilotfish's.
        pf = h.Pilotfish(h.simple_policy(self.up, workers=2, cluster={"timeout": "30s", "connect_timeout": "10s"}), **kw)
        self.addCleanup(pf.kill)
        return pf

    def assert_whole_again(self, pf):
        """No ejection, nothing held, and every request served once the clients have left."""
        samples = h.metrics(pf)
        self.assertEqual(h.sample(samples, "pilotfish_outlier_ejections_total", cluster="app") or 0, 0)
        self.assertEqual(h.sample(samples, "pilotfish_endpoints_ejected", cluster="app") or 0, 0)
        self.assertFalse([line for line in pf.lines if "ejected" in line], "an endpoint was ejected")
        for i in range(40):
            r = h.request(pf.port(), "GET", "/after/%d" % i)
            self.assertEqual(r.status, 200, r)
        self.assertEqual(h.admin_request(pf, "/live")[0], 200)
        self.assertEqual(h.admin_request(pf, "/ready")[0], 200)

        def settled():
            _, doc, _ = h.admin_json(pf, "/clusters")
            c = doc["clusters"][0]
            return all(v == 0 for k, v in c["in_flight"].items() if k != "connections") and c
        c = h.wait_for(settled, 10, what="breaker counts back to 0")
        self.assertEqual([e["health"] for e in c["endpoints"]], ["ok"])
        h.wait_for(lambda: h.sample(h.metrics(pf), "pilotfish_downstream_connections", listener="ingress") == 0, 10,
                   what="no client connection left open")

    def test_at_the_limit_every_client_is_answered_and_no_endpoint_is_blamed(self):
        pf = self.start(nofile=256)
        outcomes = burst(pf.port(), CLIENTS)
        self.assertEqual(outcomes["no answer"], 0, outcomes)
        self.assertGreater(outcomes["200"], 0, outcomes)
        self.assertEqual(set(outcomes) - {"200", "503 overloaded"}, set(), outcomes)
        self.assertGreater(outcomes["503 overloaded"], 0, "400 clients fit in 256 descriptors? %s" % outcomes)
        samples = h.metrics(pf)
        self.assertGreater(h.sample(samples, "pilotfish_descriptor_exhaustion_total", side="downstream"), 0)
        self.assertLess(h.sample(samples, "pilotfish_connection_descriptors_limit"), 256)
        h.wait_log(pf, r"out of file descriptors .*answered 503 overloaded")
        # The upstream saw only requests it answered: it was never the one at fault.
        stats = self.up.stats()
        self.assertEqual(len(stats["requests"]), outcomes["200"])
        self.assert_whole_again(pf)
        pf.stop_and_check(self)

    def stop_and_check_emfile_run(self, pf):
        """stop_and_check, but for the one process that ran out of descriptors in the kernel.
        Under UBSan (scripts/test.sh --sanitize), its vptr check reports every virtual call as
        "invalid vptr" with "<memory cannot be printed>" while no descriptor is free: the
        sanitizer runtime tests whether memory is readable by writing it into a pipe, and pipe()
        fails with EMFILE, so it cannot look at the object at all. When another thread frees a
        descriptor between that check and the report, the report prints the object's bytes
        instead of "<memory cannot be printed>". Those reports, and only those, are allowed
        here; any other sanitizer report still fails the test, and a call on an object that
        really is gone is AddressSanitizer's heap-use-after-free, which is never allowed. A
        report's lines are read without pilotfish's own log lines, which another worker may write
        between them."""
        rc = pf.stop()
        self.assertEqual(rc, 0, pf.log())
        lines = pf.log(last=1 << 30).splitlines()
        self.assertNotIn("ERROR: AddressSanitizer", "\n".join(lines))
        self.assertNotIn("handles still open", "\n".join(lines))
        # pilotfish's own log lines (another worker's thread) may fall between a report's lines.
        lines = [l for l in lines if not re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z ", l)]
        for i, line in enumerate(lines):
            if "runtime error:" in line:
                self.assertIn("does not point to an object of type", line)
                self.assertIn("object has invalid vptr", lines[i + 1])
                shown = lines[i + 2] if i + 2 < len(lines) else ""
                self.assertTrue(shown == "<memory cannot be printed>" or re.fullmatch(r"[ 0-9a-f]+", shown),
                                lines[i:i + 3])

    def test_a_limit_lowered_while_running_does_not_wedge_a_worker(self):
        # Lowered after the budget was set, so accept() itself fails with EMFILE: libuv then
        # retries at once, and used to spin there for ever, answering no one on that worker.
        # Under UBSan (scripts/test.sh --sanitize) the vptr check's false reports while no
        # descriptor is free (see stop_and_check_emfile_run) must not stop the process: with
        # halt_on_error=1 one of them, when it came, ended it before it answered anyone (a
        # clean-clone CI run: 400 clients, no answer). They are still checked at the stop.
        saved = os.environ.get("UBSAN_OPTIONS")
        if saved is not None:
            os.environ["UBSAN_OPTIONS"] = saved.replace("halt_on_error=1", "halt_on_error=0")
        try:
            pf = self.start()
        finally:
            if saved is not None:
                os.environ["UBSAN_OPTIONS"] = saved
        subprocess.run(["prlimit", "--pid", str(pf.pid), "--nofile=256:256"], check=True)
        outcomes = burst(pf.port(), CLIENTS)
        self.assertEqual(set(outcomes) - {"200", "503 overloaded", "no answer"}, set(), outcomes)
        self.assertGreater(outcomes["200"] + outcomes["503 overloaded"], 0, outcomes)
        self.assert_whole_again(pf)
        self.stop_and_check_emfile_run(pf)


class EarlyAnswerTest(unittest.TestCase):
    def test_an_answer_before_the_body_is_in_says_connection_close(self):
        # An upstream that answers 413 with Connection: close as soon as it has the head, before
        # the body: the connection to the client closes after this response, and the response
        # says so (it used to say nothing and then close).
        upstream = h.answer_once(self, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\n"
                                       b"Connection: close\r\n\r\nlarge")
        pf = h.Pilotfish(h.simple_policy(upstream))
        self.addCleanup(pf.kill)
        with h.Client(pf.port()) as c:
            c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            r = c.read_response()
            self.assertEqual(r.status, 413)
            self.assertEqual(r.body, b"large")
            self.assertEqual((r.header("connection") or "").lower(), "close", r)
            self.assertTrue(c.is_closed(timeout=10), "the connection closes, as announced")
        pf.stop_and_check(self)


if __name__ == "__main__":
    h.main()
