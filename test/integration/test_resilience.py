#!/usr/bin/env python3
"""Resilience: retries (conditions, another endpoint, per_try_timeout under the cluster timeout,
body safety, budget, the x-pilotfish-attempt header and nested retries), circuit breaking across
two workers (max_requests, max_connections, max_pending_requests, max_retries, with the overflow
metric), outlier ejection (eject, half-open probe, longer re-ejection, restore,
max_ejection_percent, no_healthy_upstream) and the keep-alive race (idle pooled connections
closed by the upstream at random moments; `Keep-Alive: timeout=N`; a reused connection closed
with no response byte). Attempts are counted from the upstreams' own records (upstream.py
modes `fault` and `light`, and the path /fault/KIND)."""

import json
import os
import random
import sys
import threading
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import upstream as up  # noqa: E402

NO_EJECT = {"consecutive_failures": 4294967295}  # outlier detection out of the way
BIG_BUDGET = {"ratio": 1, "min_per_second": 1000}  # the retry budget out of the way
FAST_BACKOFF = {"base": "1ms", "max": "1ms"}
LIMITS = ("connections", "pending_requests", "requests", "retries")


def retry(retries, on, **kw):
    r = {"retries": retries, "on": list(on), "backoff": dict(FAST_BACKOFF), "budget": dict(BIG_BUDGET)}
    r.update(kw)
    return r


class Base(unittest.TestCase):
    def setUp(self):
        self.pfs = []

    def tearDown(self):
        for pf in self.pfs:
            if pf.alive():
                pf.stop_and_check(self)

    # -- processes -----------------------------------------------------------------------------
    def upstream(self, mode="echo", name=None, **flags):
        """An upstream.py process; flags become --flag-name value (fault_count=3 -> --fault-count 3)."""
        extra = []
        for k, v in flags.items():
            extra += ["--" + k.replace("_", "-"), str(v)]
        u = h.Upstream(mode, name=name, extra=extra)
        self.addCleanup(u.stop)
        return u

    def start(self, upstreams, cluster=None, workers=2, listener=None):
        pf = h.Pilotfish(h.simple_policy(upstreams, cluster=cluster, workers=workers, listener=listener))
        self.addCleanup(pf.kill)
        self.pfs.append(pf)
        self.pf = pf
        self.port = pf.port()
        return pf

    def stop(self, pf=None):
        (pf or self.pf).stop_and_check(self)

    # -- requests ------------------------------------------------------------------------------
    def req(self, target, method="GET", body=None, headers=None, timeout=10.0, port=None):
        return h.request(port or self.port, method, target, headers=headers, body=body, timeout=timeout)

    def timed(self, target, **kw):
        t0 = time.monotonic()
        r = self.req(target, **kw)
        return r, time.monotonic() - t0

    # -- what the upstream saw -----------------------------------------------------------------
    @staticmethod
    def seen(u, target):
        return [q for q in u.requests() if q["target"] == target]

    @staticmethod
    def attempt_headers(records):
        return [up.hall(q["headers"], "x-pilotfish-attempt") for q in records]

    # -- metrics -------------------------------------------------------------------------------
    def metric(self, name, pf=None, **labels):
        labels.setdefault("cluster", "app")
        v = h.sample(h.metrics(pf or self.pf), "pilotfish_" + name, **labels)
        self.assertIsNotNone(v, "no series pilotfish_%s%r" % (name, labels))
        return int(v)

    def upstream_requests(self, code, pf=None):
        """pilotfish_upstream_requests_total{cluster="app",code} (0 when the series is absent:
        only codes that happened have a series)."""
        v = h.sample(h.metrics(pf or self.pf), "pilotfish_upstream_requests_total", cluster="app", code=str(code))
        return int(v or 0)

    def overflow(self, pf=None):
        s = h.metrics(pf or self.pf)
        out = {}
        for limit in LIMITS:
            v = h.sample(s, "pilotfish_circuit_breaker_overflow_total", cluster="app", limit=limit)
            self.assertIsNotNone(v, "no overflow series for limit %s" % limit)
            out[limit] = int(v)
        return out

    # -- responses -----------------------------------------------------------------------------
    def assert_error(self, r, status, reason):
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.header("x-pilotfish-error"), reason, r)
        self.assertEqual(len(r.body.strip().splitlines()), 1, "a one-line text body: %r" % r.body)

    def assert_overloaded(self, r):
        self.assert_error(r, 503, "overloaded")
        self.assertEqual(r.header("x-pilotfish-overloaded"), "true", r)

    def assert_upstream_fault(self, r, status):
        """The upstream's own fault response, forwarded as it is."""
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.header("x-fault"), str(status), "not the upstream's own response: %r" % r)
        self.assertTrue(r.body.startswith(b"fault %d " % status), r)
        self.assertIsNone(r.header("x-pilotfish-error"), r)
        self.assertIsNone(r.header("x-pilotfish-overloaded"), r)


# =============================================================================================
# Retries
# =============================================================================================

class RetryConditionTest(Base):
    def test_5xx_retried_until_success_then_forwarded_as_is(self):
        u = self.upstream()
        self.start(u, cluster={"retry": retry(2, ["5xx"]), "outlier_detection": NO_EJECT})
        # 503 twice, then OK: 3 attempts, numbered 1, 2, 3.
        t = "/fault/503?n=2&key=a"
        r = self.req(t)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["name"], "echo")
        self.assertEqual([q["fault"] for q in self.seen(u, t)], ["503", "503", None])
        self.assertEqual(self.attempt_headers(self.seen(u, t)), [["1"], ["2"], ["3"]])
        # 500 is a 5xx too.
        t = "/fault/500?n=1&key=b"
        self.assertEqual(self.req(t).status, 200)
        self.assertEqual(len(self.seen(u, t)), 2)
        # More failures than retries: 3 attempts, the last 503 forwarded with its body and headers.
        t = "/fault/503?n=3&key=c"
        self.assert_upstream_fault(self.req(t), 503)
        self.assertEqual(len(self.seen(u, t)), 3)
        # A success is never retried.
        t = "/plain"
        self.assertEqual(self.req(t).status, 200)
        self.assertEqual(self.attempt_headers(self.seen(u, t)), [["1"]])
        self.assertEqual(self.metric("retries_total"), 2 + 1 + 2)
        self.assertEqual(self.upstream_requests(503), 2 + 3)
        self.assertEqual(self.upstream_requests(500), 1)
        self.assertEqual(self.upstream_requests(200), 3)
        self.assertEqual(self.metric("retry_budget_exhausted_total"), 0)

    def test_connect_failure_only_does_not_retry_a_503(self):
        for label, cluster in (("explicit", {"retry": retry(2, ["connect-failure"])}),
                               ("default", {})):
            with self.subTest(retry=label):
                u = self.upstream()
                cluster = dict(cluster, outlier_detection=NO_EJECT)
                self.start(u, cluster=cluster)
                t = "/fault/503?n=1&key=" + label
                self.assert_upstream_fault(self.req(t), 503)
                self.assertEqual(self.attempt_headers(self.seen(u, t)), [["1"]])
                self.assertEqual(self.metric("retries_total"), 0)
                self.assertEqual(self.upstream_requests(503), 1)
                self.stop()

    def test_gateway_error_retries_502_503_504_not_500(self):
        u = self.upstream()
        self.start(u, cluster={"retry": retry(1, ["gateway-error"]), "outlier_detection": NO_EJECT})
        for code in (502, 503, 504):
            t = "/fault/%d?n=1" % code
            r = self.req(t)
            self.assertEqual(r.status, 200, "%d under gateway-error: %r" % (code, r))
            self.assertEqual(len(self.seen(u, t)), 2, code)
        for code in (500, 501):
            t = "/fault/%d?n=1" % code
            self.assert_upstream_fault(self.req(t), code)
            self.assertEqual(len(self.seen(u, t)), 1, "%d is not a gateway error" % code)
        self.assertEqual(self.metric("retries_total"), 3)

    def test_retriable_status_codes(self):
        u = self.upstream()
        self.start(u, cluster={"retry": retry(1, ["retriable-status-codes"], status_codes=[409]),
                               "outlier_detection": NO_EJECT})
        t = "/fault/409?n=1"
        self.assertEqual(self.req(t).status, 200)
        self.assertEqual(self.attempt_headers(self.seen(u, t)), [["1"], ["2"]])
        for code in (503, 500, 404):
            t = "/fault/%d?n=1" % code
            self.assert_upstream_fault(self.req(t), code)
            self.assertEqual(len(self.seen(u, t)), 1, "%d is not in status_codes" % code)
        self.assertEqual(self.metric("retries_total"), 1)

    def test_reset_before_head_retried_reset_after_head_not(self):
        # Mode close: every response closes its connection, so every attempt is on a new
        # connection and the keep-alive resend (a reused connection) never applies.
        u = self.upstream("close")
        self.start(u, cluster={"retry": retry(1, ["reset"]), "outlier_detection": NO_EJECT})
        for kind in ("reset", "close"):  # RST, or FIN, before any response byte
            t = "/fault/%s?n=1" % kind
            r = self.req(t)
            self.assertEqual(r.status, 200, "%s before the head with on [reset]: %r" % (kind, r))
            self.assertEqual([(q["fault"], q["seq"]) for q in self.seen(u, t)], [(kind, 1), (None, 1)])
            self.assertEqual(self.attempt_headers(self.seen(u, t)), [["1"], ["2"]])
        # The head was sent: the response had started; no retry, and no complete 200.
        t = "/fault/reset-after-head?n=1"
        c = h.Client(self.port, timeout=10)
        self.addCleanup(c.close)
        c.send(h.build_request("GET", t))
        try:
            r = c.read_response(timeout=10)
        except h.Closed:
            r = None
        if r is None:
            self.assertTrue(c.eof, "a relayed head, then the connection closed")
        else:
            self.assert_error(r, 502, "upstream_reset")
        self.assertEqual(len(self.seen(u, t)), 1, "a response that had started is not retried")
        self.assertEqual(self.metric("retries_total"), 2)
        self.stop()

        # Without reset in retry.on: 502 upstream_reset after 1 attempt.
        u = self.upstream("close")
        self.start(u, cluster={"retry": retry(2, ["5xx", "connect-failure"]), "outlier_detection": NO_EJECT})
        t = "/fault/reset?n=1"
        self.assert_error(self.req(t), 502, "upstream_reset")
        self.assertEqual(len(self.seen(u, t)), 1)
        self.assertEqual(self.upstream_requests("reset"), 1)
        self.assertEqual(self.metric("retries_total"), 0)


class RetryEndpointTest(Base):
    def test_retry_goes_to_the_other_endpoint(self):
        bad = self.upstream("fault", name="bad", fault="503")
        good = self.upstream("echo", name="good")
        self.start([bad, good], cluster={"lb": "round_robin", "retry": retry(1, ["5xx"]),
                                         "outlier_detection": NO_EJECT})
        n = 20
        for i in range(n):
            r = self.req("/r/%d" % i)
            self.assertEqual(r.status, 200, "request %d: %r" % (i, r))
            self.assertEqual(r.json()["name"], "good")
        at_bad = bad.requests()
        at_good = good.requests()
        self.assertEqual(sorted(q["target"] for q in at_good), sorted("/r/%d" % i for i in range(n)),
                         "every request ends at the good endpoint, once")
        self.assertEqual(self.attempt_headers(at_bad), [["1"]] * len(at_bad),
                         "a retry never goes back to the failing endpoint")
        retried = sorted(q["target"] for q in at_good if up.hall(q["headers"], "x-pilotfish-attempt") == ["2"])
        self.assertEqual(retried, sorted(q["target"] for q in at_bad),
                         "each request that failed at the bad endpoint was retried at the good one")
        self.assertGreaterEqual(len(at_bad), n // 2 - 2, "round robin sends first attempts to both endpoints")
        self.assertEqual(self.metric("retries_total"), len(at_bad))
        self.assertEqual(self.upstream_requests(503), len(at_bad))
        self.assertEqual(self.upstream_requests(200), n)


class PerTryTimeoutTest(Base):
    def test_hanging_endpoint_abandoned_after_per_try_timeout(self):
        hang = self.upstream("hang", name="hang")
        ok = self.upstream("echo", name="ok")
        self.start([hang, ok], cluster={"lb": "round_robin", "timeout": "5s", "outlier_detection": NO_EJECT,
                                        "retry": retry(1, ["5xx"], per_try_timeout="300ms")})
        n = 8
        for i in range(n):
            r, _ = self.timed("/pt/%d" % i, timeout=10)  # the cluster timeout (5s) would be a 504
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["name"], "ok")
        at_hang = hang.requests()
        self.assertGreaterEqual(len(at_hang), n // 2 - 2, "round robin sends first attempts to both")
        second = [q for q in ok.requests() if self.attempt_headers([q]) == [["2"]]]
        self.assertEqual(sorted(q["target"] for q in second), sorted(q["target"] for q in at_hang),
                         "exactly the requests that hung were abandoned and sent to the other endpoint")
        self.assertEqual(len(ok.requests()), n)
        self.assertEqual(self.metric("retries_total"), len(at_hang))

    def test_cluster_timeout_bounds_every_attempt(self):
        a = self.upstream("hang", name="a")
        b = self.upstream("hang", name="b")
        self.start([a, b], cluster={"timeout": "1s", "outlier_detection": NO_EJECT,
                                    "retry": retry(5, ["5xx"], per_try_timeout="400ms")})
        r, elapsed = self.timed("/all-hang", timeout=10)
        self.assert_error(r, 504, "timeout")
        self.assertGreater(elapsed, 0.9, "answered before the cluster timeout")
        attempts = sorted(a.requests() + b.requests(), key=lambda q: q["t"])
        # Attempts start at 0, ~0.4 and ~0.8 s; the third is cut short by the cluster timeout:
        # three attempts, not the six that retries: 5 would allow.
        self.assertEqual(self.attempt_headers(attempts), [["1"], ["2"], ["3"]])
        self.assertEqual(self.metric("retries_total"), 2)


class BodySafetyTest(Base):
    def test_post_not_retried_put_retried_up_to_64k(self):
        u = self.upstream("close")  # every attempt on a new connection (no keep-alive resend)
        self.start(u, cluster={"retry": retry(2, ["reset", "5xx", "connect-failure"]),
                               "outlier_detection": NO_EJECT})
        # POST: the body was sent, never retried.
        body = b"p" * 1000
        t = "/fault/reset?n=1&key=post"
        self.assert_error(self.req(t, "POST", body), 502, "upstream_reset")
        self.assertEqual([(q["body_len"], q["complete"]) for q in self.seen(u, t)], [(1000, True)])
        t = "/fault/503?n=1&key=post503"
        self.assert_upstream_fault(self.req(t, "POST", body), 503)
        self.assertEqual(len(self.seen(u, t)), 1)
        # PUT (idempotent) with a small body, and with exactly 64 KiB: retried, the whole body
        # sent again.
        for size, key in ((1000, "put"), (64 * 1024, "put64k")):
            body = bytes(random.Random(size).getrandbits(8) for _ in range(size))
            t = "/fault/reset?n=1&key=" + key
            r = self.req(t, "PUT", body)
            self.assertEqual(r.status, 200, "PUT of %d bytes: %r" % (size, r))
            self.assertEqual(r.json()["body_len"], size)
            self.assertEqual([(q["method"], q["body_len"], q["body_crc"], q["complete"]) for q in self.seen(u, t)],
                             [("PUT", size, zlib.crc32(body), True)] * 2)
            self.assertEqual(self.attempt_headers(self.seen(u, t)), [["1"], ["2"]])
        # PUT with more than 64 KiB: not retried.
        for size, key in ((64 * 1024 + 1, "put64k1"), (100 * 1024, "put100k")):
            t = "/fault/reset?n=1&key=" + key
            self.assert_error(self.req(t, "PUT", b"q" * size), 502, "upstream_reset")
            self.assertEqual([q["body_len"] for q in self.seen(u, t)], [size], "PUT of %d bytes" % size)
        self.assertEqual(self.metric("retries_total"), 2)

    def test_post_retried_after_connect_failure(self):
        live = self.upstream()
        dead = "127.0.0.1:%d" % h.free_port()
        self.start([dead, live], cluster={"lb": "round_robin", "outlier_detection": NO_EJECT,
                                          "retry": retry(1, ["connect-failure"])})
        for i in range(6):
            body = b"post-%d" % i * 100
            r = self.req("/cf/%d" % i, "POST", body)
            self.assertEqual(r.status, 200, "nothing was sent on a failed connect: retried (%r)" % r)
            self.assertEqual(r.json()["body_len"], len(body))
        self.assertEqual([(q["target"], q["complete"]) for q in live.requests()],
                         [("/cf/%d" % i, True) for i in range(6)])
        failures = self.upstream_requests("connect_failure")
        self.assertGreaterEqual(failures, 1, "round robin tried the dead endpoint")
        self.assertEqual(self.metric("retries_total"), failures)


class BudgetTest(Base):
    def test_budget_caps_retries_against_a_failing_upstream(self):
        u = self.upstream("fault", fault="503")
        self.start(u, cluster={"retry": {"retries": 3, "on": ["5xx"], "backoff": {"base": "1ms", "max": "2ms"},
                                         "budget": {"ratio": 0.2, "min_per_second": 1}},
                               "circuit_breaker": {"max_retries": 1000}, "outlier_detection": NO_EJECT})
        threads, per_thread = 4, 50
        n = threads * per_thread
        statuses = []
        lock = threading.Lock()
        deadline = time.monotonic() + 30

        def client(k):
            with h.Client(self.port, timeout=10) as c:
                for i in range(per_thread):
                    if time.monotonic() > deadline:
                        return
                    r = c.request("GET", "/b/%d/%d" % (k, i))
                    with lock:
                        statuses.append((r.status, r.header("x-fault")))
        t0 = time.monotonic()
        for res in h.run_concurrently([lambda k=k: client(k) for k in range(threads)], timeout=40):
            if isinstance(res, BaseException):
                raise res
        elapsed = time.monotonic() - t0
        self.assertEqual(len(statuses), n, "200 requests in %.1fs" % elapsed)
        self.assertEqual(set(statuses), {(503, "503")}, "every answer is the upstream's 503, as it is")
        per_target = {}
        for q in u.requests():
            per_target[q["target"]] = per_target.get(q["target"], 0) + 1
        self.assertEqual(len(per_target), n)
        attempts = sum(per_target.values())
        retries = attempts - n
        self.assertLessEqual(attempts, n + 0.2 * n + 1 * 10 + 5,
                             "retries over 10 s stay under ratio x requests + min_per_second x 10")
        self.assertGreaterEqual(retries, 0.2 * n, "retries are made while the budget allows (50 at most)")
        self.assertEqual(self.metric("retries_total"), retries)
        self.assertEqual(self.upstream_requests(503), attempts)
        cut_short = sum(1 for v in per_target.values() if v < 4)
        self.assertGreater(self.metric("retry_budget_exhausted_total"), 0)
        self.assertEqual(self.metric("retry_budget_exhausted_total"), cut_short,
                         "each request whose retry the budget refused counts once")
        self.assertEqual(self.overflow()["retries"], 0)


class AttemptHeaderTest(Base):
    def test_attempt_header_numbers_and_replaces_the_clients(self):
        u = self.upstream()
        self.start(u, cluster={"retry": retry(2, ["5xx"]), "outlier_detection": NO_EJECT})
        t = "/fault/503?key=always"
        self.assert_upstream_fault(self.req(t), 503)
        self.assertEqual(self.attempt_headers(self.seen(u, t)), [["1"], ["2"], ["3"]])
        # A request that already carries the header came through another sidecar: no retry
        # here, and the header the upstream sees is pilotfish's own (one, value 1).
        t = "/fault/503?key=inbound"
        self.assert_upstream_fault(self.req(t, headers=[("X-Pilotfish-Attempt", "7")]), 503)
        self.assertEqual(self.attempt_headers(self.seen(u, t)), [["1"]])
        t = "/fine"
        self.assertEqual(self.req(t, headers=[("x-pilotfish-attempt", "2")]).status, 200)
        self.assertEqual(self.attempt_headers(self.seen(u, t)), [["1"]])
        self.assertEqual(self.metric("retries_total"), 2)


class NestedRetryTest(Base):
    def chain(self, nested):
        """client -> A -> B -> upstream that always answers 503; both retry 2 on 5xx."""
        u = self.upstream("fault", fault="503")
        b_retry = retry(2, ["5xx"])
        if nested:
            b_retry["nested"] = True
        pf_b = self.start(u, cluster={"retry": b_retry, "outlier_detection": NO_EJECT})
        pf_a = self.start("127.0.0.1:%d" % pf_b.port(), cluster={"retry": retry(2, ["5xx"]),
                                                                 "outlier_detection": NO_EJECT})
        r = self.req("/chain")
        self.assert_upstream_fault(r, 503)
        return u, pf_a, pf_b

    def test_inbound_attempt_header_stops_multiplication(self):
        u, pf_a, pf_b = self.chain(nested=False)
        self.assertEqual(self.attempt_headers(u.requests()), [["1"]] * 3, "3 attempts, not 9")
        self.assertEqual(self.metric("retries_total", pf=pf_a), 2)
        self.assertEqual(self.metric("retries_total", pf=pf_b), 0)

    def test_nested_true_retries_at_both_hops(self):
        u, pf_a, pf_b = self.chain(nested=True)
        self.assertEqual(self.attempt_headers(u.requests()), [["1"], ["2"], ["3"]] * 3)
        self.assertEqual(self.metric("retries_total", pf=pf_a), 2)
        self.assertEqual(self.metric("retries_total", pf=pf_b), 6)


# =============================================================================================
# Circuit breaking (two workers; the limits are cluster-wide)
# =============================================================================================

class CircuitBreakerTest(Base):
    def in_flight(self):
        return h.cluster_info(self.pf)["in_flight"]

    def wait_in_flight(self, key, value, timeout=3.0):
        h.wait_for(lambda: self.in_flight()[key] == value, timeout,
                   what="/clusters in_flight.%s == %d (now %r)" % (key, value, self.in_flight()))

    def refused_at_once(self, targets, upstream=None):
        """Concurrent requests (one connection each) that must all be refused as overloaded by
        pilotfish itself: none of them reaches the upstream."""
        results = h.run_concurrently([lambda t=t: self.timed(t, timeout=5) for t in targets], timeout=15)
        for t, res in zip(targets, results):
            if isinstance(res, BaseException):
                raise res
            r, _ = res
            self.assert_overloaded(r)
            if upstream is not None:
                self.assertEqual(self.seen(upstream, t), [], "%s reached the upstream" % t)

    def test_max_requests(self):
        u = self.upstream()
        self.start(u, cluster={"circuit_breaker": {"max_requests": 3}, "timeout": "10s"})
        cb = h.cluster_info(self.pf)["circuit_breaker"]
        self.assertEqual(cb, {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 3,
                              "max_retries": 3})
        first = h.start_thread(lambda: self.req("/slow?ms=1000"))
        others = [h.start_thread(lambda: self.req("/slow?ms=3000")) for _ in range(2)]
        u.wait_requests(3)
        self.assertEqual(self.in_flight()["requests"], 3)
        # Three in flight: six more, on six connections spread over both workers, are refused.
        self.refused_at_once(["/over/%d" % i for i in range(6)], upstream=u)
        self.assertEqual(self.overflow(), {"connections": 0, "pending_requests": 0, "requests": 6, "retries": 0})
        # One finishes: a new one passes (three in flight again), the next is refused.
        self.assertEqual(first(10).status, 200)
        self.wait_in_flight("requests", 2)
        fourth = h.start_thread(lambda: self.req("/slow?ms=1000"))
        h.wait_for(lambda: self.seen(u, "/slow?ms=1000")[1:], 3.0, what="the 4th slow request upstream")
        self.refused_at_once(["/over/again"], upstream=u)
        self.assertEqual(self.overflow()["requests"], 7)
        for get in others + [fourth]:
            self.assertEqual(get(10).status, 200)
        self.wait_in_flight("requests", 0)
        self.assertEqual(self.req("/after").status, 200)
        self.assertEqual(sorted(q["target"] for q in u.requests()),
                         ["/after", "/slow?ms=1000", "/slow?ms=1000", "/slow?ms=3000", "/slow?ms=3000"],
                         "refused requests never reach the upstream")
        self.assertEqual(self.overflow(), {"connections": 0, "pending_requests": 0, "requests": 7, "retries": 0})

    def test_max_requests_exact_under_a_burst(self):
        u = self.upstream()
        self.start(u, cluster={"circuit_breaker": {"max_requests": 3}, "timeout": "10s"})
        results = h.run_concurrently([lambda i=i: self.timed("/slow?ms=1500&i=%d" % i, timeout=10)
                                      for i in range(8)], timeout=20)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        ok = [r for r, _ in results if r.status == 200]
        refused = [(r, e) for r, e in results if r.status != 200]
        self.assertEqual(len(ok), 3, "exactly max_requests pass, summed over both workers: %r" % results)
        for r, _ in refused:
            self.assert_overloaded(r)
        self.assertEqual(len(u.requests()), 3, "the refused ones were answered by pilotfish, not the upstream")
        self.assertEqual(self.overflow()["requests"], 5)

    def test_max_connections(self):
        u = self.upstream()
        self.start(u, cluster={"circuit_breaker": {"max_connections": 2}, "idle_timeout": "300ms",
                               "timeout": "10s"})
        slow = [h.start_thread(lambda: self.req("/slow?ms=1500")) for _ in range(2)]
        u.wait_requests(2)
        self.assertEqual(u.stats()["connections"], 2)
        self.assertEqual(self.in_flight()["connections"], 2)
        # Both connections busy: a third concurrent request needs a new one and is refused.
        self.refused_at_once(["/third"], upstream=u)
        self.assertEqual(self.overflow(), {"connections": 1, "pending_requests": 0, "requests": 0, "retries": 0})
        for get in slow:
            self.assertEqual(get(10).status, 200)
        # The pooled connections close after idle_timeout; then a request passes again.
        h.wait_for(lambda: u.stats()["open"] == 0, 3.0, what="pooled connections closed")
        self.wait_in_flight("connections", 0)
        self.assertEqual(self.req("/later").status, 200)
        self.assertEqual(u.stats()["connections"], 3)
        self.assertEqual(len(self.seen(u, "/third")), 0)
        self.assertEqual(self.overflow()["connections"], 1)

    def test_max_pending_requests(self):
        # A full accept queue: connects hang (SYN dropped) until connect_timeout.
        u = self.upstream("backlog")
        self.start(u, cluster={"circuit_breaker": {"max_pending_requests": 2}, "connect_timeout": "1500ms",
                               "timeout": "10s", "retry": {"retries": 0}, "outlier_detection": NO_EJECT})
        pending = [h.start_thread(lambda i=i: self.timed("/pending/%d" % i)) for i in range(2)]
        self.wait_in_flight("pending_requests", 2)
        self.refused_at_once(["/pending/third"], upstream=u)
        self.assertEqual(self.overflow(), {"connections": 0, "pending_requests": 1, "requests": 0, "retries": 0})
        for get in pending:
            r, elapsed = get(10)
            self.assertEqual(r.status, 503, r)
            self.assertIn(r.header("x-pilotfish-error"), ("connect_failure", "connect_timeout"), r)
            self.assertIsNone(r.header("x-pilotfish-overloaded"), r)
            self.assertGreater(elapsed, 1.2, "waited for connect_timeout")
        self.wait_in_flight("pending_requests", 0)

    def test_max_retries(self):
        u = self.upstream()
        self.start(u, cluster={"retry": retry(1, ["5xx"]), "circuit_breaker": {"max_retries": 2},
                               "outlier_detection": NO_EJECT, "timeout": "10s"})
        # Each: a 503 at once, then the retry waits 2 s at the upstream (a retry in flight).
        slow = [h.start_thread(lambda k=k: self.req("/fault/503?n=1&ms=2000&key=" + k)) for k in ("k1", "k2")]
        u.wait_requests(4)
        self.assertEqual(self.in_flight()["retries"], 2)
        self.assertEqual(self.in_flight()["requests"], 2)
        for k in ("k3", "k4", "k5"):
            t = "/fault/503?n=1&ms=2000&key=" + k
            r, _ = self.timed(t)
            # The spec: "when a limit is reached the request is answered at once with 503,
            # x-pilotfish-error: overloaded and x-pilotfish-overloaded: true", for every limit L
            # of the overflow metric, retries included (not the upstream's 503 as it is): the
            # upstream saw the first attempt only, and pilotfish answered, not its slow retry.
            self.assert_overloaded(r)
            self.assertEqual(len(self.seen(u, t)), 1, "no retry over max_retries")
        self.assertEqual(self.overflow(), {"connections": 0, "pending_requests": 0, "requests": 0, "retries": 3})
        for get, k in zip(slow, ("k1", "k2")):
            self.assertEqual(get(10).status, 200)
            self.assertEqual(len(self.seen(u, "/fault/503?n=1&ms=2000&key=" + k)), 2)
        self.wait_in_flight("retries", 0)
        t = "/fault/503?n=1&key=k6"
        self.assertEqual(self.req(t).status, 200, "retries pass again once none is in flight")
        self.assertEqual(len(self.seen(u, t)), 2)
        self.assertEqual(self.metric("retries_total"), 3)
        self.assertEqual(self.overflow()["retries"], 3)


# =============================================================================================
# Outlier ejection
# =============================================================================================

class OutlierTest(Base):
    def until_requests(self, u, n, limit=60, path="/o/%d"):
        """Sequential requests (each on a new connection) until u has seen n; returns the
        responses and the wall-clock time just after the last one."""
        responses = []
        for i in range(limit):
            responses.append(self.req(path % i))
            if len(u.requests()) >= n:
                return responses, time.time()
        self.fail("upstream %s saw %d requests after %d sent, wanted %d"
                  % (u.name, len(u.requests()), limit, n))

    def assert_ejected(self, u, ejections, until_from, until_to):
        e = h.endpoint_info(self.pf, u.address)
        self.assertEqual(e["health"], "ejected", e)
        self.assertEqual(e["ejections"], ejections, e)
        until = h.parse_iso_utc(e["ejected_until"])
        slack = 0.0 if "." in e["ejected_until"] else 1.0  # a time in whole seconds
        self.assertGreaterEqual(until, until_from - slack, "ejected_until %r vs now %.3f" % (e, time.time()))
        self.assertLessEqual(until, until_to + slack, "ejected_until %r vs now %.3f" % (e, time.time()))
        return e

    def test_eject_probe_and_eject_again_for_longer(self):
        bad = self.upstream("fault", name="bad", fault="503", fault_delay_ms=300)
        g1 = self.upstream("light", name="g1")
        g2 = self.upstream("light", name="g2")
        self.start([bad, g1, g2], cluster={"lb": "round_robin", "retry": {"retries": 0},
                                           "outlier_detection": {"consecutive_failures": 3,
                                                                 "base_ejection_time": "1s",
                                                                 "max_ejection_time": "10s"}})
        for e in h.cluster_info(self.pf)["endpoints"]:
            self.assertEqual((e["health"], e["ejected_until"], e["ejections"], e["consecutive_failures"]),
                             ("ok", None, 0, 0), e)
        responses, t_eject = self.until_requests(bad, 3)
        self.assertEqual([r.status for r in responses if r.status != 200], [503] * 3)
        self.assertEqual(len(bad.requests()), 3)
        # Ejected at the third failure (which took 300 ms) for base_ejection_time x 1.
        self.assert_ejected(bad, 1, t_eject + 1.0 - 0.4, t_eject + 1.0 + 0.05)
        for g in (g1, g2):
            self.assertEqual(h.endpoint_info(self.pf, g.address)["health"], "ok")
        self.assertEqual(self.metric("outlier_ejections_total"), 1)
        self.assertEqual(self.metric("endpoints_ejected"), 1)

        # Load from 3 threads for 3 s: the ejection ends after ~1 s, exactly one request probes
        # (it fails after 300 ms), then the endpoint is ejected again for 2 s.
        stop_at = time.monotonic() + 3.0
        results, health_seen = [], []
        lock = threading.Lock()

        def load(k):
            i = 0
            while time.monotonic() < stop_at:
                r = self.req("/load/%d/%d" % (k, i))
                with lock:
                    results.append((r.status, r.header("x-fault")))
                i += 1
                time.sleep(0.01)

        def watch():
            while time.monotonic() < stop_at:
                e = h.endpoint_info(self.pf, bad.address)
                if not health_seen or health_seen[-1] != e["health"]:
                    health_seen.append(e["health"])
                time.sleep(0.03)
        for res in h.run_concurrently([lambda k=k: load(k) for k in range(3)] + [watch], timeout=20):
            if isinstance(res, BaseException):
                raise res
        at_bad = bad.requests()
        self.assertEqual(len(at_bad), 4, "exactly one probe after the ejection time")
        probe = at_bad[3]
        self.assertGreaterEqual(probe["t"], t_eject + 1.0 - 0.15, "no request during the ejection (1 s)")
        self.assertEqual(sorted(set(results)), [(200, None), (503, "503")])
        self.assertEqual(sum(1 for s in results if s[0] == 503), 1, "only the probe failed")
        self.assertGreater(len(results), 50)
        self.assertEqual(health_seen[0], "ejected")
        self.assertIn("probing", health_seen, "the probe in flight (300 ms) shows as probing")
        self.assertEqual(health_seen[-1], "ejected")
        # Ejected again when the probe failed (probe start + 300 ms), for 2 x base.
        self.assert_ejected(bad, 2, probe["t"] + 0.3 + 2.0 - 0.1, probe["t"] + 0.3 + 2.0 + 0.3)
        self.assertEqual(self.metric("outlier_ejections_total"), 2)
        self.assertEqual(self.metric("endpoints_ejected"), 1)

    def test_recovered_endpoint_restored_after_one_successful_probe(self):
        flaky = self.upstream("fault", name="flaky", fault="503", fault_count=3)
        good = self.upstream("light", name="good")
        self.start([flaky, good], cluster={"lb": "round_robin", "retry": {"retries": 0},
                                           "outlier_detection": {"consecutive_failures": 3,
                                                                 "base_ejection_time": "1s"}})
        _, t_eject = self.until_requests(flaky, 3)
        self.assert_ejected(flaky, 1, t_eject + 1.0 - 0.2, t_eject + 1.0 + 0.05)
        self.assertEqual(self.metric("endpoints_ejected"), 1)
        # Requests every 50 ms until the probe reaches it; it now succeeds.
        deadline = time.monotonic() + 3.0
        i = 0
        while len(flaky.requests()) < 4 and time.monotonic() < deadline:
            self.assertEqual(self.req("/wait/%d" % i).status, 200)
            i += 1
            time.sleep(0.05)
        at = flaky.requests()
        self.assertEqual(len(at), 4, "one probe within 3 s")
        self.assertGreaterEqual(at[3]["t"], t_eject + 1.0 - 0.15, "no request during the ejection (1 s)")
        self.assertEqual(at[3]["fault"], None)
        h.wait_for(lambda: h.endpoint_info(self.pf, flaky.address)["health"] == "ok", 0.5,
                   what="health ok after the successful probe")
        e = h.endpoint_info(self.pf, flaky.address)
        self.assertEqual((e["health"], e["ejected_until"], e["ejections"], e["consecutive_failures"]),
                         ("ok", None, 1, 0), e)
        self.assertEqual(self.metric("endpoints_ejected"), 0)
        self.assertEqual(self.metric("outlier_ejections_total"), 1)
        # Back in the rotation.
        for j in range(10):
            self.assertEqual(self.req("/back/%d" % j).status, 200)
        self.assertGreaterEqual(len(flaky.requests()) - 4, 3, "a restored endpoint takes its share")

    def test_max_ejection_percent(self):
        a = self.upstream("fault", name="a", fault="503")
        b = self.upstream("fault", name="b", fault="503")
        self.start([a, b], cluster={"lb": "round_robin", "retry": {"retries": 0},
                                    "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": "10s",
                                                          "max_ejection_time": "20s", "max_ejection_percent": 50}})
        for i in range(12):
            self.assert_upstream_fault(self.req("/both/%d" % i), 503)
        counts = sorted([len(a.requests()), len(b.requests())])
        self.assertEqual(counts, [2, 10], "one ejected after 2 failures; the other may not be (50%)")
        health = sorted(e["health"] for e in h.cluster_info(self.pf)["endpoints"])
        self.assertEqual(health, ["ejected", "ok"])
        self.assertEqual(self.metric("endpoints_ejected"), 1)
        self.assertEqual(self.metric("outlier_ejections_total"), 1)

    def test_single_endpoint_ejected_then_no_healthy_upstream(self):
        bad = self.upstream("fault", fault="503", fault_delay_ms=300)
        self.start(bad, cluster={"retry": {"retries": 0},
                                 "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": "10s",
                                                       "max_ejection_time": "20s"}})
        for i in range(3):
            self.assert_upstream_fault(self.req("/one/%d" % i), 503)
        # max_ejection_percent 50 of one endpoint: at least one may always be ejected.
        self.assertEqual(h.endpoint_info(self.pf, bad.address)["health"], "ejected")
        for i in range(5):
            r = self.req("/none/%d" % i)
            self.assert_error(r, 503, "no_healthy_upstream")
            self.assertIsNone(r.header("x-pilotfish-overloaded"), r)
        self.assertEqual(len(bad.requests()), 3, "answered by pilotfish, none sent to the ejected upstream")
        self.assertEqual(self.metric("endpoints_ejected"), 1)
        self.assertEqual(self.metric("outlier_ejections_total"), 1)
        self.assertEqual(sum(self.overflow().values()), 0)


    def test_reload_keeps_ejection_state_and_breaker_counts(self):
        # Issue 6: a cluster whose endpoints are unchanged keeps its ejection state and its
        # breaker counts across a reload; an ejected endpoint that the reload removes stops
        # counting against max_ejection_percent.
        bad = self.upstream("fault", fault="503")
        good = self.upstream("echo", name="good")
        policy = h.simple_policy([bad, good], workers=2, cluster={
            "retry": {"retries": 0}, "circuit_breaker": {"max_requests": 1},
            "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": "30s",
                                  "max_ejection_percent": 50}})
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        self.pfs.append(pf)
        self.pf, self.port = pf, pf.port()
        for i in range(8):
            if len(bad.requests()) >= 2:
                break
            self.req("/e/%d" % i)
        self.assertEqual(h.endpoint_info(pf, bad.address)["health"], "ejected")
        slow = h.Client(self.port, timeout=10)
        self.addCleanup(slow.close)
        slow.send(h.build_request("GET", "/slow?ms=1500"))
        h.wait_for(lambda: h.cluster_info(pf)["in_flight"]["requests"] == 1, 3.0, what="one request in flight")

        changed = json.loads(json.dumps(policy))
        changed["clusters"][0]["timeout"] = "20s"
        changed["listeners"][0]["idle_timeout"] = "50s"
        h.write_policy(pf, changed)
        status, doc, _ = h.admin_json(pf, "/reload", "POST")
        self.assertEqual((status, doc["outcome"]), (200, "applied"), doc)
        info = h.cluster_info(pf)
        self.assertEqual(h.endpoint_info(pf, bad.address)["health"], "ejected", info)
        self.assertEqual(info["in_flight"]["requests"], 1, "the breaker count went through the reload")
        self.assert_overloaded(self.req("/over"))
        self.assertEqual(slow.read_response(timeout=10).status, 200)
        h.wait_for(lambda: h.cluster_info(pf)["in_flight"]["requests"] == 0, 3.0, what="the slow request done")
        self.assertEqual(self.metric("endpoints_ejected"), 1)

        # The ejected endpoint leaves the policy: nothing is ejected any more.
        shrunk = json.loads(json.dumps(changed))
        shrunk["clusters"][0]["endpoints"] = [good.address]
        h.write_policy(pf, shrunk)
        status, doc, _ = h.admin_json(pf, "/reload", "POST")
        self.assertEqual((status, doc["outcome"]), (200, "applied"), doc)
        self.assertEqual(self.metric("endpoints_ejected"), 0)
        self.assertEqual(h.cluster_info(pf)["endpoints_ejected"], 0)
        self.assertEqual(self.req("/after").status, 200)

# =============================================================================================
# Keep-alive race and the Keep-Alive hint
# =============================================================================================

class KeepAliveTest(Base):
    def test_upstream_closing_idle_connections_at_random_loses_no_request(self):
        u = self.upstream("light", idle_close_max_ms=50)
        self.start(u)
        total, threads = 10000, 16
        deadline = time.monotonic() + 30
        lock = threading.Lock()
        state = {"next": 0, "ok": 0}
        failures = []

        def client(k):
            rng = random.Random(1000 + k)
            c = h.Client(self.port, timeout=10)
            try:
                while time.monotonic() < deadline:
                    with lock:
                        if state["next"] >= total:
                            return
                        i = state["next"]
                        state["next"] += 1
                    try:
                        r = c.request("GET", "/ka/%d" % i)
                        good = r.status == 200
                    except (h.Closed, h.Timeout, OSError) as e:
                        r, good = e, False
                    with lock:
                        if good:
                            state["ok"] += 1
                        else:
                            failures.append((i, r))
                    if not good:
                        c.close()
                        c = h.Client(self.port, timeout=10)
                    # Idle gaps of 0-30 ms, so that pooled connections sit idle as long as the
                    # upstream's random 0-50 ms idle close, and often race it.
                    if rng.random() < 0.5:
                        time.sleep(rng.uniform(0, 0.030))
            finally:
                c.close()
        t0 = time.monotonic()
        for res in h.run_concurrently([lambda k=k: client(k) for k in range(threads)], timeout=60):
            if isinstance(res, BaseException):
                raise res
        elapsed = time.monotonic() - t0
        self.assertEqual(failures[:10], [], "%d failed requests" % len(failures))
        self.assertEqual(state["ok"], total, "only %d requests done in %.1fs" % (state["ok"], elapsed))
        # light flushes its stats when a connection opens or closes; idle ones close within 50 ms.
        h.wait_for(lambda: u.stats()["open"] == 0, 3.0, what="every upstream connection closed")
        s = u.stats()
        self.assertGreaterEqual(s["light_requests"], total)
        self.assertGreater(s.get("idle_closed", 0), 100, "the upstream closed idle connections often: %r"
                           % {k: v for k, v in s.items() if k != "peer_closed_idle_ms"})
        self.assertEqual(self.metric("retries_total"), 0, "a keep-alive resend is not a retry")
        self.assertEqual(self.metric("retry_budget_exhausted_total"), 0)

    def test_keepalive_timeout_hint_closes_pooled_connections_first(self):
        u = self.upstream("light", keepalive_timeout=1, idle_close_ms=1000)
        self.start(u)
        c = h.Client(self.port, timeout=10)
        self.addCleanup(c.close)
        n = 4
        for i in range(n):
            if i:
                time.sleep(1.5)
            r = c.request("GET", "/hint/%d" % i)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["seq"], 1, "a new upstream connection each time")
        h.wait_for(lambda: u.stats()["open"] == 0, 3.0, what="the last pooled connection closed")
        s = u.stats()
        self.assertEqual(s["connections"], n)
        self.assertEqual(s["max_seq"], 1)
        self.assertEqual(s.get("idle_closed", 0), 0,
                         "pilotfish closes an idle pooled connection before the upstream does")
        idle = s.get("peer_closed_idle_ms", [])
        self.assertEqual(len(idle), n, s)
        for ms in idle:
            self.assertGreaterEqual(ms, 700, "closed after 0.8 x timeout=1: %r" % idle)
            self.assertLessEqual(ms, 950, "closed after 0.8 x timeout=1: %r" % idle)

    def test_reused_connection_closed_without_a_response_is_resent_once(self):
        # The upstream closes a connection, with no response byte, when a 2nd request comes on
        # it: exactly what a request racing an idle close sees. Retries are off, so any resend
        # is the keep-alive resend. One worker: every request uses the same pool.
        u = self.upstream("fault", fault="drop-reused")
        self.start(u, workers=1, cluster={"retry": {"retries": 0}, "timeout": "4s"})
        c = h.Client(self.port, timeout=5)
        self.addCleanup(c.close)
        n = 5
        for i in range(n):
            r = c.request("GET", "/g/%d" % i)
            self.assertEqual(r.status, 200, r)
        seen = [(q["target"], q["seq"], q["fault"]) for q in u.requests()]
        want = [("/g/0", 1, None)]
        for i in range(1, n):
            want += [("/g/%d" % i, 2, "drop-reused"), ("/g/%d" % i, 1, None)]
        self.assertEqual(seen, want)
        # A POST with a body is not resent.
        r = c.request("POST", "/post", body=b"x" * 100)
        self.assert_error(r, 502, "upstream_reset")
        self.assertEqual([(q["seq"], q["body_len"], q["complete"]) for q in self.seen(u, "/post")],
                         [(2, 100, True)])
        c.close()
        c = h.Client(self.port, timeout=5)
        self.addCleanup(c.close)
        self.assertEqual(c.request("GET", "/warm").status, 200)
        # A POST is not idempotent: even without a body it is not resent (it may have been
        # acted on). A PUT (idempotent) with a body is.
        r = c.request("POST", "/post-empty", headers=[("Content-Length", "0")])
        self.assert_error(r, 502, "upstream_reset")
        self.assertEqual([q["seq"] for q in self.seen(u, "/post-empty")], [2])
        c.close()
        c = h.Client(self.port, timeout=5)
        self.addCleanup(c.close)
        self.assertEqual(c.request("GET", "/warm2").status, 200)
        r = c.request("PUT", "/put", body=b"y" * 100)
        self.assertEqual(r.status, 200, r)
        self.assertEqual([(q["seq"], q["body_len"]) for q in self.seen(u, "/put")], [(2, 100), (1, 100)])
        self.assertEqual(self.metric("retries_total"), 0, "a keep-alive resend is not a retry")
        self.assertEqual(self.metric("retry_budget_exhausted_total"), 0)


if __name__ == "__main__":
    h.main()
