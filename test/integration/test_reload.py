#!/usr/bin/env python3
"""Hot policy reload: POST /reload, SIGHUP and the file watch (in-place write and
rename-into-place) under steady keep-alive load; rejected files keep the running policy;
an unchanged file is no event; listeners added and removed; a WebSocket tunnel and pooled upstream
connections outlive reloads; requests in flight keep their snapshot; the history (admin endpoint
and JSON-lines file), /config's last_reload and the reload metrics agree with what happened."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import upstream as up  # noqa: E402

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SETTINGS_ORDER = ["service", "admin.address", "workers", "log_level", "drain_timeout", "drain_delay",
                  "policy_history", "wait_for_clusters", "access_log", "identity"]
SETTING_KEYS = {"admin.address": "admin"}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def config(pf):
    status, doc, _ = h.admin_json(pf, "/config")
    assert status == 200, "GET /config answered %d" % status
    return doc


def events(pf):
    status, doc, headers = h.admin_json(pf, "/policy/history")
    assert status == 200, "GET /policy/history answered %d" % status
    return doc["events"]


def post_reload(pf):
    """(status, JSON body) of POST /reload; checks the content type."""
    status, doc, headers = h.admin_json(pf, "/reload", "POST")
    assert headers.get("content-type", "").startswith("application/json"), headers
    return status, doc


def write_and_reload(pf, policy, how="inplace"):
    """Writes the policy file and POSTs /reload on a connection opened beforehand, so that the
    POST follows the write within a millisecond or two: the file watch (150 ms debounce) would
    otherwise see the write first. Returns (sha256 written, status, JSON body)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", h.admin_port(pf), timeout=15)
    conn.connect()
    try:
        sha = h.write_policy(pf, policy, how)
        conn.request("POST", "/reload", body=b"")
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        assert (r.getheader("content-type") or "").startswith("application/json"), r.getheaders()
        try:
            return sha, r.status, json.loads(text)
        except ValueError:
            raise AssertionError("POST /reload answered %d, not JSON: %r" % (r.status, text[:500]))
    finally:
        conn.close()


def wait_version(pf, version, timeout=5.0):
    return h.wait_for(lambda: config(pf)["version"] == version, timeout, interval=0.02,
                      what="/config version %d" % version)


def wait_events(pf, n, timeout=5.0):
    return h.wait_for(lambda: len(events(pf)) >= n and events(pf), timeout, interval=0.02,
                      what="%d events in /policy/history" % n)


def history_file(pf):
    return pf.config + ".history.jsonl"


def read_jsonl(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def reload_metrics(pf):
    s = h.metrics(pf)
    return (h.sample(s, "pilotfish_policy_reloads_total", result="applied"),
            h.sample(s, "pilotfish_policy_reloads_total", result="rejected"),
            h.series(s, "pilotfish_policy_info"))


def changes(listeners=None, routes=None, clusters=None, settings=None):
    def cs(d):
        d = d or {}
        return {"added": list(d.get("added", [])), "removed": list(d.get("removed", [])),
                "modified": list(d.get("modified", []))}
    return {"listeners": cs(listeners), "routes": cs(routes), "clusters": cs(clusters),
            "settings": list(settings or [])}


NO_CHANGES = changes()


def match_text(match):
    parts = []
    if not match:
        return "*"
    if "host" in match:
        parts.append("host=" + match["host"])
    if "path_prefix" in match:
        parts.append("path_prefix=" + match["path_prefix"])
    if "method" in match:
        parts.append("method=" + match["method"])
    for name, value in sorted((match.get("headers") or {}).items()):
        parts.append("header:%s=%s" % (name, value))
    return " ".join(parts) or "*"


def keyed_routes(listener):
    out, seen = [], {}
    for r in listener["routes"]:
        key = "%s: %s" % (listener["name"], match_text(r.get("match")))
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            key += " #%d" % seen[key]
        out.append((key, r["cluster"]))
    return out


def expected_changes(old, new):
    """The "changes" object the specification gives for two policy dicts built by this file
    (every key written the same way in both, so a dict comparison is the loader's comparison)."""
    def named(before, after, same):
        ob = {x["name"]: x for x in before}
        nb = {x["name"]: x for x in after}
        return {"added": [x["name"] for x in after if x["name"] not in ob],
                "removed": [x["name"] for x in before if x["name"] not in nb],
                "modified": [x["name"] for x in after if x["name"] in ob and not same(ob[x["name"]], x)]}

    def strip_routes(l):
        return {k: v for k, v in l.items() if k != "routes"}

    listeners = named(old["listeners"], new["listeners"], lambda a, b: strip_routes(a) == strip_routes(b))
    clusters = named(old["clusters"], new["clusters"], lambda a, b: a == b)
    routes = {"added": [], "removed": [], "modified": []}
    old_l = {l["name"]: l for l in old["listeners"]}
    new_l = {l["name"]: l for l in new["listeners"]}
    for l in new["listeners"]:
        if l["name"] not in old_l:
            continue
        before = dict(keyed_routes(old_l[l["name"]]))
        for key, cluster in keyed_routes(l):
            if key not in before:
                routes["added"].append("%s -> %s" % (key, cluster))
            elif before[key] != cluster:
                routes["modified"].append("%s -> %s" % (key, cluster))
    for l in old["listeners"]:
        if l["name"] not in new_l:
            continue
        after = dict(keyed_routes(new_l[l["name"]]))
        for key, cluster in keyed_routes(l):
            if key not in after:
                routes["removed"].append("%s -> %s" % (key, cluster))
    settings = [k for k in SETTINGS_ORDER
                if old.get(SETTING_KEYS.get(k, k)) != new.get(SETTING_KEYS.get(k, k))]
    return {"listeners": listeners, "routes": routes, "clusters": clusters, "settings": settings}


def check_errors(text):
    """The `FILE:LINE:COL: ...` error lines `pilotfish check` prints for a policy text, with FILE
    as a placeholder `@FILE@` (the same loader must give the same errors on reload)."""
    d = h.make_tmpdir("pf-check-")
    path = os.path.join(d, "policy.yaml")
    with open(path, "w") as f:
        f.write(text)
    rc, out, err = h.run_cli(["check", "--config", path])
    assert rc == 1, "pilotfish check accepted a file this test means to be invalid:\n%s\n%s%s" % (text, out, err)
    lines = [l for l in (out + err).splitlines() if re.match(re.escape(path) + r":\d+:\d+: ", l)]
    assert lines, "check printed no FILE:LINE:COL error:\n" + out + err
    return [l.replace(path, "@FILE@", 1) for l in lines]


def get_json(client, path, host="test.local"):
    r = client.request("GET", path, host=host)
    if r.status != 200:
        raise AssertionError("GET %s: %r" % (path, r))
    if "close" in (r.header("connection") or "").lower():
        raise AssertionError("GET %s: unexpected connection: close on a kept connection: %r" % (path, r))
    return r.json()


def cleanup_close(testcase, client):
    testcase.addCleanup(client.close)
    return client


# ---------------------------------------------------------------------------------------------
# 1. Fifty applied and five rejected reloads under load
# ---------------------------------------------------------------------------------------------

BASE_STATE = {"flip": "blue", "timeout": "10s", "connect": "1s", "retries": 1, "retry_on": ["connect-failure"],
              "idle": "60s", "drain": "30s", "extra": False, "side": False}


def load_policy(st, ups):
    routes = [{"match": {"path_prefix": "/flip/"}, "cluster": st["flip"]}]
    if st["extra"]:
        routes.append({"match": {"path_prefix": "/extra/"}, "cluster": "extra"})
    routes.append({"cluster": "blue"})
    listeners = [{"name": "ingress", "address": "127.0.0.1:0", "idle_timeout": st["idle"], "routes": routes}]
    if st["side"]:
        listeners.append({"name": "side", "address": "127.0.0.1:0", "idle_timeout": "60s",
                          "routes": [{"cluster": "green"}]})
    clusters = [{"name": "blue", "endpoints": [ups["blue"].address], "timeout": st["timeout"],
                 "connect_timeout": st["connect"],
                 "retry": {"retries": st["retries"], "on": list(st["retry_on"])}},
                {"name": "green", "endpoints": [ups["green"].address]}]
    if st["extra"]:
        clusters.append({"name": "extra", "endpoints": [ups["red"].address]})
    return {"version": 1, "service": "reload-it", "admin": {"address": "127.0.0.1:0"}, "workers": 2,
            "access_log": "off", "drain_timeout": st["drain"], "listeners": listeners, "clusters": clusters}


def mutate(st, kinds):
    st = dict(st)
    for kind in kinds.split("+"):
        if kind == "flip":
            st["flip"] = "green" if st["flip"] == "blue" else "blue"
        elif kind == "timeout":
            st["timeout"] = "12s" if st["timeout"] == "10s" else "10s"
        elif kind == "retry":
            if st["retries"] == 1:
                st["retries"], st["retry_on"] = 2, ["connect-failure", "reset"]
            else:
                st["retries"], st["retry_on"] = 1, ["connect-failure"]
        elif kind == "connect":
            st["connect"] = "2s" if st["connect"] == "1s" else "1s"
        elif kind == "idle":
            st["idle"] = "45s" if st["idle"] == "60s" else "60s"
        elif kind == "drain":
            st["drain"] = "25s" if st["drain"] == "30s" else "30s"
        elif kind in ("add_extra", "remove_extra"):
            st["extra"] = kind == "add_extra"
        elif kind in ("add_side", "remove_side"):
            st["side"] = kind == "add_side"
        else:
            raise ValueError(kind)
    return st


def bad_policy_text(kind, st, ups):
    p = load_policy(st, ups)
    if kind == "syntax":
        return h.policy_text(p).rstrip("\n") + "\n  broken: [unclosed\n"
    if kind == "unknown_key":
        p["listeners"][0]["routs"] = []
    elif kind == "missing_cluster":
        p["listeners"][0]["routes"][0]["cluster"] = "nope"
    elif kind == "bad_duration":
        p["clusters"][0]["timeout"] = "250"
    elif kind == "empty_endpoints":
        p["clusters"][1]["endpoints"] = []
    else:
        raise ValueError(kind)
    return h.policy_text(p)


APPLIED_KINDS = ["flip", "timeout", "flip", "retry", "flip+idle", "connect", "flip", "drain", "flip+timeout", "retry"]
SPECIAL_KINDS = {8: "add_extra", 14: "add_side", 22: "remove_extra", 36: "remove_side", 41: "add_extra+flip"}
TRIGGERS = ["admin", "sighup", "inplace", "admin", "rename"]
# After the applied step with this index, a rejected file: (kind, how it is triggered).
INVALID_AFTER = {5: ("syntax", "admin"), 15: ("unknown_key", "sighup"), 25: ("missing_cluster", "inplace"),
                 35: ("bad_duration", "admin"), 45: ("empty_endpoints", "rename")}
TRIGGER_NAME = {"admin": "admin", "sighup": "sighup", "inplace": "file", "rename": "file"}


class LoadThread(threading.Thread):
    """One keep-alive connection doing GETs in a loop until `stop` (bounded in time and count)."""

    def __init__(self, port, path, names, stop, deadline, max_requests=60000):
        super().__init__(daemon=True)
        self.port, self.path, self.names, self.stop = port, path, names, stop
        self.deadline, self.max_requests = deadline, max_requests
        self.count = 0
        self.errors = []
        self.seen = set()
        self.stopped_by_request = False

    def run(self):
        try:
            c = h.Client(self.port, timeout=5)
        except OSError as e:
            self.errors.append("connect: %r" % e)
            return
        try:
            req = h.build_request("GET", self.path)
            while not self.stop.is_set() and time.monotonic() < self.deadline and self.count < self.max_requests:
                c.send(req)
                r = c.read_response(timeout=5)
                if r.status != 200:
                    self.errors.append("request %d: %r" % (self.count, r))
                    return
                if "close" in (r.header("connection") or "").lower():
                    self.errors.append("request %d: connection: close on a kept listener: %r" % (self.count, r))
                    return
                name = r.json()["name"]
                if name not in self.names:
                    self.errors.append("request %d reached %r, expected one of %s" % (self.count, name, self.names))
                    return
                self.seen.add(name)
                self.count += 1
                time.sleep(0.002)
            self.stopped_by_request = self.stop.is_set()
        except Exception as e:  # a socket error, a timeout, a premature close: all failures
            self.errors.append("after %d requests: %s: %s" % (self.count, type(e).__name__, e))
        finally:
            c.close()


class ReloadUnderLoadTest(unittest.TestCase):
    def setUp(self):
        self.ups = {}
        for name in ("blue", "green", "red"):
            u = h.Upstream("light", name=name)
            self.addCleanup(u.stop)
            self.ups[name] = u
        self.state = dict(BASE_STATE)
        self.policy = load_policy(self.state, self.ups)
        self.pf = h.Pilotfish(self.policy)
        self.addCleanup(self.pf.kill)

    def probe(self, client, st, side_client, at_once=True):
        """The next request on already-open keep-alive connections follows the new policy: at
        once after POST /reload answered (it answers once every worker switched); after SIGHUP
        or a file change, /config's version is what the test waited for, so allow a moment."""
        def check():
            self.assertEqual(get_json(client, "/flip/probe")["name"], st["flip"])
            self.assertEqual(get_json(client, "/extra/probe")["name"], "red" if st["extra"] else "blue")
            self.assertEqual(get_json(client, "/anything")["name"], "blue")
            if side_client is not None:
                self.assertEqual(get_json(side_client, "/side")["name"], "green")
            return True
        if at_once:
            return check()
        deadline = time.monotonic() + 2
        while True:
            try:
                return check()
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def test_fifty_reloads_under_load(self):
        pf = self.pf
        port = pf.port()
        start_sha = h.file_sha256(pf.config)

        stop = threading.Event()
        deadline = time.monotonic() + 40  # a safety net; the reloads end the load well before
        threads = [LoadThread(port, "/load/%d" % i, {"blue"}, stop, deadline) for i in range(2)]
        threads += [LoadThread(port, "/flip/load/%d" % i, {"blue", "green"}, stop, deadline) for i in range(2)]
        for t in threads:
            t.start()
        probe = cleanup_close(self, h.Client(port, timeout=5))
        self.probe(probe, self.state, None)
        h.wait_for(lambda: all(t.count > 0 for t in threads), 5, what="every load thread under way")

        planned = []     # the events expected after startup, in order (see the matching below)
        version = 1
        side_client = None
        side_port = None
        running_text = h.policy_text(self.policy)
        # A reload asked for by POST or SIGHUP right after the write can still lose the race to
        # the file watch when this process is starved of CPU for 150 ms: then the watch applies
        # (or rejects) the file first. That is correct behaviour; it is counted, and bounded so
        # that a trigger that does not work still fails the test.
        raced = {"admin": 0, "sighup": 0}
        asked = {"admin": 0, "sighup": 0}

        for step in range(50):
            kinds = SPECIAL_KINDS.get(step, APPLIED_KINDS[step % len(APPLIED_KINDS)])
            new_state = mutate(self.state, kinds)
            new_policy = load_policy(new_state, self.ups)
            want = expected_changes(self.policy, new_policy)
            self.assertNotEqual(want, NO_CHANGES, "step %d (%s) must change something" % (step, kinds))
            trigger = TRIGGERS[step % len(TRIGGERS)]
            mark = h.log_mark(pf)
            version += 1
            at_once = False
            event_trigger = TRIGGER_NAME[trigger]
            if trigger == "admin":
                asked["admin"] += 1
                sha, status, body = write_and_reload(pf, new_policy)
                self.assertEqual(status, 200, "step %d: %r" % (step, body))
                if body.get("outcome") == "unchanged" and body.get("version") == version:
                    raced["admin"] += 1
                    event_trigger = "file"
                else:
                    self.assertEqual(body.get("outcome"), "applied", "step %d: %r" % (step, body))
                    self.assertEqual(body.get("version"), version, body)
                    self.assertEqual(body.get("changes"), want, "step %d (%s)" % (step, kinds))
                    at_once = True
                self.assertEqual(body.get("sha256"), sha, body)
            elif trigger == "sighup":
                asked["sighup"] += 1
                sha = h.write_policy(pf, new_policy, "inplace")
                pf.send_signal(signal.SIGHUP)
                wait_version(pf, version)
                last = events(pf)[-1]
                if last.get("version") == version and last.get("trigger") == "file":
                    raced["sighup"] += 1
                    event_trigger = "file"
            else:
                sha = h.write_policy(pf, new_policy, trigger)
                wait_version(pf, version)
            planned.append({"version": version, "trigger": event_trigger, "sha256": sha,
                            "outcome": "applied", "changes": want})
            self.state, self.policy, running_text = new_state, new_policy, h.policy_text(new_policy)

            if "add_side" in kinds:
                side_port = h.listener_port_since(pf, "side", mark)
                side_client = cleanup_close(self, h.Client(side_port, timeout=5))
            if "remove_side" in kinds:
                if at_once:
                    self.assertTrue(h.connect_refused(side_port), "the removed listener must refuse connections")
                else:
                    h.wait_for(lambda: h.connect_refused(side_port), 2, what="removed listener refusing")
                self.assertTrue(side_client.is_closed(2), "an idle connection of a removed listener is closed")
                side_client = None
            self.probe(probe, self.state, side_client, at_once=at_once)

            if step in INVALID_AFTER:
                kind, how = INVALID_AFTER[step]
                text = bad_policy_text(kind, self.state, self.ups)
                expected_errors = [e.replace("@FILE@", pf.config, 1) for e in check_errors(text)]
                n_events = len(events(pf))
                trig = TRIGGER_NAME[how]

                def has_event():
                    return any(e.get("trigger") == trig and e.get("outcome") == "rejected"
                               for e in events(pf)[n_events:])
                if how == "admin":
                    asked["admin"] += 1
                    bad_sha, status, body = write_and_reload(pf, text)
                    self.assertEqual(status, 422, body)
                    self.assertEqual(body.get("outcome"), "rejected", body)
                    self.assertEqual(body.get("version"), version, body)
                    self.assertEqual(body.get("errors"), expected_errors)
                elif how == "sighup":
                    asked["sighup"] += 1
                    bad_sha = h.write_policy(pf, text, "inplace")
                    pf.send_signal(signal.SIGHUP)
                else:
                    bad_sha = h.write_policy(pf, text, how)
                h.wait_for(has_event, 5, what="a rejected event, trigger %s" % trig)
                # The running policy's bytes back in the file: the file watch finds it unchanged.
                h.write_policy(pf, running_text, "inplace")
                planned.append({"version": version, "trigger": trig, "sha256": bad_sha,
                                "outcome": "rejected", "errors": expected_errors})
                h.wait_log(pf, re.escape(expected_errors[0]), mark, 5)
                self.assertEqual(config(pf)["version"], version)
                self.probe(probe, self.state, side_client)

        # Let the file watch see the last restore (no event expected from it), then stop the load.
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(10)
        for t in threads:
            self.assertFalse(t.is_alive())
            self.assertEqual(t.errors, [], "load thread %s failed" % t.path)
            self.assertTrue(t.stopped_by_request, "load thread %s ended before the reloads did (%d requests)"
                            % (t.path, t.count))
            self.assertGreater(t.count, 100, t.path)
        self.assertEqual(threads[2].seen | threads[3].seen, {"blue", "green"},
                         "the load on /flip/ must have followed the route to both clusters")

        # The history: the startup event, then exactly what was planned. Around a rejected file
        # asked for by POST or SIGHUP, the file watch may have rejected the same bytes too (the
        # race above): one such event, same bytes and errors, trigger file, is allowed.
        evs = events(pf)
        self.assertEqual(evs[0]["trigger"], "startup")
        self.assertEqual(evs[0]["outcome"], "applied")
        self.assertEqual(evs[0]["version"], 1)
        self.assertEqual(evs[0]["sha256"], start_sha)
        self.assertNotIn("changes", evs[0])
        got = evs[1:]
        extra_rejected = 0
        i = 0

        def watch_duplicate(ev, want):
            return (ev.get("outcome") == "rejected" and ev.get("trigger") == "file" and want["trigger"] != "file"
                    and ev.get("sha256") == want["sha256"] and ev.get("errors") == want["errors"])
        for n, want in enumerate(planned):
            self.assertLess(i, len(got), "history ends before planned event %d %r" % (n, want))
            if want["outcome"] == "rejected" and watch_duplicate(got[i], want):
                extra_rejected += 1
                i += 1
            ev = got[i]
            self.assertEqual({k: ev.get(k) for k in want}, want, "event %d of %d" % (n + 1, len(planned)))
            self.assertRegex(ev.get("time", ""), TIME_RE)
            if want["outcome"] == "applied":
                self.assertNotIn("errors", ev)
            i += 1
            if want["outcome"] == "rejected" and i < len(got) and watch_duplicate(got[i], want):
                extra_rejected += 1
                i += 1
        self.assertEqual(got[i:], [], "events nobody planned")
        for trig in ("admin", "sighup"):
            self.assertLessEqual(raced[trig] * 4, asked[trig],
                                 "%d of %d reloads asked for by %s were done by the file watch first"
                                 % (raced[trig], asked[trig], trig))
        self.assertLessEqual(extra_rejected, 1)
        times = [e["time"] for e in evs]
        self.assertEqual(times, sorted(times), "events oldest first")

        applied, rejected, info = reload_metrics(pf)
        self.assertEqual(applied, 50)
        self.assertEqual(rejected, 5 + extra_rejected)
        final_sha = h.file_sha256(pf.config)
        self.assertEqual(info, [({"version": "51", "sha256": final_sha}, 1.0)])
        cfg = config(pf)
        self.assertEqual((cfg["version"], cfg["sha256"]), (51, final_sha))
        self.assertEqual(cfg["last_reload"], evs[-1])
        h.wait_for(lambda: read_jsonl(history_file(pf)) == events(pf), 3,
                   what="the history file to hold the same events as /policy/history")
        probe.close()
        if side_client is not None:
            side_client.close()
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# 2, 3. Rejected and unchanged files
# ---------------------------------------------------------------------------------------------

def two_route_policy(a, b, second="b"):
    return {"version": 1, "service": "it", "admin": {"address": "127.0.0.1:0"}, "workers": 2,
            "access_log": "off",
            "listeners": [{"name": "ingress", "address": "127.0.0.1:0",
                           "routes": [{"match": {"path_prefix": "/b/"}, "cluster": second},
                                      {"cluster": "a"}]}],
            "clusters": [{"name": "a", "endpoints": [a.address]}, {"name": "b", "endpoints": [b.address]}]}


def light_upstreams(testcase, *names):
    """A "light" upstream for each name, stopped when the test ends."""
    ups = []
    for name in names:
        ups.append(h.Upstream("light", name=name))
        testcase.addCleanup(ups[-1].stop)
    return ups


class RejectedAndUnchangedTest(unittest.TestCase):
    def setUp(self):
        self.a, self.b = light_upstreams(self, "a", "b")
        self.policy = two_route_policy(self.a, self.b)
        self.pf = h.Pilotfish(self.policy)
        self.addCleanup(self.pf.kill)
        self.sha = h.file_sha256(self.pf.config)

    def test_rejected_reload_keeps_running_policy(self):
        pf = self.pf
        c = cleanup_close(self, h.Client(pf.port()))
        self.assertEqual(get_json(c, "/b/x")["name"], "b")
        good_text = pf.policy_text
        self.assertIsNone(config(pf)["last_reload"], "no reload yet")

        bad_texts = []
        p = two_route_policy(self.a, self.b, second="a")
        p["listeners"][0]["routs"] = []
        bad_texts.append(("unknown key", h.policy_text(p)))
        p = two_route_policy(self.a, self.b, second="missing")
        bad_texts.append(("route to a missing cluster", h.policy_text(p)))
        p = two_route_policy(self.a, self.b, second="a")
        p["clusters"][0]["timeout"] = "250"
        bad_texts.append(("duration without unit", h.policy_text(p)))
        bad_texts.append(("YAML syntax", h.policy_text(two_route_policy(self.a, self.b, second="a")) + "x: [\n"))

        for n, (what, text) in enumerate(bad_texts, 1):
            expected = [e.replace("@FILE@", pf.config, 1) for e in check_errors(text)]
            mark = h.log_mark(pf)
            bad_sha, status, body = write_and_reload(pf, text)
            h.write_policy(pf, good_text)  # before the file watch looks (see the load test)
            self.assertEqual(status, 422, "%s: %r" % (what, body))
            self.assertEqual(body.get("outcome"), "rejected", body)
            self.assertEqual(body.get("version"), 1, body)
            self.assertEqual(body.get("errors"), expected, what)
            for e in body["errors"]:
                self.assertRegex(e, "^" + re.escape(pf.config) + r":\d+:\d+: ")
            if what == "unknown key":
                line = next(i for i, l in enumerate(text.splitlines(), 1) if l.strip().startswith("routs:"))
                col = text.splitlines()[line - 1].index("routs") + 1
                self.assertTrue(any(e.startswith("%s:%d:%d: " % (pf.config, line, col)) and "unknown key" in e
                                    for e in body["errors"]), body["errors"])
            # The error is logged on stderr as FILE:LINE:COL: message.
            h.wait_log(pf, re.escape(expected[0]), mark, 5)

            # The old routes are served: on the open connection and on a new one.
            self.assertEqual(get_json(c, "/b/x")["name"], "b", what)
            with h.Client(pf.port()) as fresh:
                self.assertEqual(get_json(fresh, "/b/y")["name"], "b", what)

            cfg = config(pf)
            self.assertEqual((cfg["version"], cfg["sha256"]), (1, self.sha))
            last = cfg["last_reload"]
            self.assertEqual(last["outcome"], "rejected")
            self.assertEqual(last["trigger"], "admin")
            self.assertEqual(last["sha256"], bad_sha)
            self.assertEqual(last["version"], 1)
            self.assertEqual(last["errors"], expected)
            self.assertRegex(last["time"], TIME_RE)
            applied, rejected, info = reload_metrics(pf)
            self.assertEqual((applied, rejected), (0, n), what)
            self.assertEqual(info, [({"version": "1", "sha256": self.sha}, 1.0)])
            evs = events(pf)
            self.assertEqual(len(evs), 1 + n)
            self.assertEqual(evs[-1], last)

        # Give the file watch time to look at the restored file: no event, nothing changes.
        time.sleep(0.6)
        self.assertEqual(len(events(pf)), 1 + len(bad_texts))
        self.assertEqual(reload_metrics(pf)[:2], (0, len(bad_texts)))

        # A good file after the rejected ones: version 2 (rejections do not count).
        sha2, status, body = write_and_reload(pf, two_route_policy(self.a, self.b, second="a"))
        self.assertEqual(status, 200, body)
        self.assertEqual(body, {"outcome": "applied", "version": 2, "sha256": sha2,
                                "changes": changes(routes={"modified": ["ingress: path_prefix=/b/ -> a"]},
)})
        self.assertEqual(get_json(c, "/b/x")["name"], "a")
        self.assertEqual(reload_metrics(pf), (1, len(bad_texts), [({"version": "2", "sha256": sha2}, 1.0)]))
        evs = events(pf)
        self.assertEqual([e["outcome"] for e in evs], ["applied"] + ["rejected"] * len(bad_texts) + ["applied"])
        self.assertEqual([e["version"] for e in evs], [1] * (1 + len(bad_texts)) + [2])
        h.wait_for(lambda: read_jsonl(history_file(pf)) == events(pf), 3, what="history file == /policy/history")
        c.close()
        pf.stop_and_check(self)

    def test_unchanged_file_is_no_event(self):
        pf = self.pf
        c = cleanup_close(self, h.Client(pf.port()))
        self.assertEqual(get_json(c, "/b/x")["name"], "b")
        status, body = post_reload(pf)
        self.assertEqual(status, 200, body)
        self.assertEqual(body.get("outcome"), "unchanged", body)
        self.assertEqual(body.get("version"), 1)
        self.assertEqual(body.get("sha256"), self.sha)

        # The same bytes written again, in place and renamed into place, and SIGHUP: no event.
        h.write_policy(pf, self.pf.policy_text, "inplace")
        time.sleep(0.4)
        h.write_policy(pf, self.pf.policy_text, "rename")
        time.sleep(0.4)
        pf.send_signal(signal.SIGHUP)
        time.sleep(0.6)
        evs = events(pf)
        self.assertEqual(len(evs), 1, evs)
        self.assertEqual(evs[0]["trigger"], "startup")
        cfg = config(pf)
        self.assertEqual((cfg["version"], cfg["sha256"], cfg["last_reload"]), (1, self.sha, None))
        self.assertEqual(reload_metrics(pf), (0, 0, [({"version": "1", "sha256": self.sha}, 1.0)]))
        self.assertEqual(read_jsonl(history_file(pf)), evs)
        self.assertEqual(get_json(c, "/b/x")["name"], "b")

        # A comment is a different file (another sha256) with the same policy: applied, no changes.
        commented = self.pf.policy_text + "# a comment changes the bytes, not the policy\n"
        sha2, status, body = write_and_reload(pf, commented)
        self.assertEqual(status, 200, body)
        self.assertEqual(body, {"outcome": "applied", "version": 2, "sha256": sha2, "changes": NO_CHANGES})
        status, body = post_reload(pf)
        self.assertEqual((status, body.get("outcome"), body.get("version"), body.get("sha256")),
                         (200, "unchanged", 2, sha2))
        time.sleep(0.4)
        self.assertEqual(len(events(pf)), 2)
        self.assertEqual(reload_metrics(pf)[:2], (1, 0))
        c.close()
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# 4. Listeners added and removed
# ---------------------------------------------------------------------------------------------

class ListenerAddRemoveTest(unittest.TestCase):
    def test_add_and_remove_listeners(self):
        u = h.Upstream("echo", name="app")
        self.addCleanup(u.stop)

        def policy(names):
            return {"version": 1, "admin": {"address": "127.0.0.1:0"}, "workers": 2, "access_log": "off",
                    "listeners": [{"name": n, "address": "127.0.0.1:0", "routes": [{"cluster": "app"}]}
                                  for n in names],
                    "clusters": [{"name": "app", "endpoints": [u.address], "timeout": "10s"}]}

        pf = h.Pilotfish(policy(["ingress", "old"]))
        self.addCleanup(pf.kill)
        ingress_port, old_port = pf.port("ingress"), pf.port("old")

        kept = cleanup_close(self, h.Client(ingress_port, timeout=10))
        self.assertEqual(kept.request("GET", "/kept-1").status, 200)
        old_idle = cleanup_close(self, h.Client(old_port, timeout=10))
        self.assertEqual(old_idle.request("GET", "/old-idle").status, 200)
        old_busy = cleanup_close(self, h.Client(old_port, timeout=10))
        old_busy.send(h.build_request("GET", "/slow?ms=1500"))
        u.wait_requests(3)

        mark = h.log_mark(pf)
        _, status, body = write_and_reload(pf, policy(["ingress", "new"]))
        self.assertEqual(status, 200, body)
        self.assertEqual(body.get("outcome"), "applied", body)
        self.assertEqual(body.get("changes"), changes(listeners={"added": ["new"], "removed": ["old"]}))

        # The removed listener stops accepting at once; its idle connection is closed.
        self.assertTrue(h.connect_refused(old_port), "a removed listener refuses new connections")
        self.assertTrue(old_idle.is_closed(2), "an idle connection of a removed listener is closed")
        # The new listener is bound and accepts, its port logged like at startup.
        new_port = h.listener_port_since(pf, "new", mark)
        self.assertNotIn(new_port, (ingress_port, old_port))
        r = h.request(new_port, "GET", "/on-new")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["target"], "/on-new")
        # The kept listener keeps its port and its connections.
        self.assertEqual(h.ports_from_log(pf)["ingress"], ingress_port)
        r = kept.request("GET", "/kept-2")
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.header("connection"))
        self.assertEqual(h.request(ingress_port, "GET", "/kept-new-conn").status, 200)

        # The request in flight on the removed listener finishes, with connection: close.
        r = old_busy.read_response(timeout=10)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["target"], "/slow?ms=1500")
        self.assertEqual((r.header("connection") or "").lower(), "close")
        self.assertTrue(old_busy.is_closed(2))
        self.assertTrue(h.connect_refused(old_port))
        self.assertTrue(pf.alive())

        # And back: "old" again gets a listener (a new port), "new" goes away.
        mark = h.log_mark(pf)
        _, status, body = write_and_reload(pf, policy(["ingress", "old"]))
        self.assertEqual(body.get("changes"), changes(listeners={"added": ["old"], "removed": ["new"]}))
        port = h.listener_port_since(pf, "old", mark)
        self.assertEqual(h.request(port, "GET", "/old-again").status, 200)
        self.assertTrue(h.connect_refused(new_port))
        self.assertEqual(kept.request("GET", "/kept-3").status, 200)
        for c in (kept, old_idle, old_busy):
            c.close()
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# 5. A WebSocket tunnel across reloads
# ---------------------------------------------------------------------------------------------

def read_frame(c, timeout=5.0):
    deadline = time.monotonic() + timeout
    hdr = c._exact(2, deadline)
    opcode, n = hdr[0] & 0x0F, hdr[1] & 0x7F
    if n == 126:
        n = int.from_bytes(c._exact(2, deadline), "big")
    elif n == 127:
        n = int.from_bytes(c._exact(8, deadline), "big")
    return opcode, c._exact(n, deadline)


class WebSocketAcrossReloadsTest(unittest.TestCase):
    def test_tunnel_stays_open_across_ten_reloads(self):
        ws = h.Upstream("echo", name="ws")
        self.addCleanup(ws.stop)
        other = h.Upstream("light", name="other")
        self.addCleanup(other.stop)

        def policy(i):
            # Every reload touches what the tunnel's request went through: the route (/ws moves
            # to another cluster), its cluster's timeouts, the listener's settings.
            return {"version": 1, "admin": {"address": "127.0.0.1:0"}, "workers": 2, "access_log": "off",
                    "listeners": [{"name": "ingress", "address": "127.0.0.1:0",
                                   "idle_timeout": "%ds" % (60 - i),
                                   "routes": [{"match": {"path_prefix": "/ws"},
                                               "cluster": "ws" if i % 2 == 0 else "other"},
                                              {"cluster": "other"}]}],
                    "clusters": [{"name": "ws", "endpoints": [ws.address], "timeout": "%ds" % (10 + i)},
                                 {"name": "other", "endpoints": [other.address]}]}

        pf = h.Pilotfish(policy(0))
        self.addCleanup(pf.kill)
        c = cleanup_close(self, h.Client(pf.port(), timeout=10))
        c.send(h.build_request("GET", "/ws", headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13")]))
        r = c.read_response(timeout=5)
        self.assertEqual(r.status, 101, r)
        c.send(up.ws_frame(0x1, b"before", mask=b"abcd"))
        self.assertEqual(read_frame(c), (0x1, b"before"))

        for i in range(1, 11):
            _, status, body = write_and_reload(pf, policy(i))
            self.assertEqual((status, body.get("outcome"), body.get("version")), (200, "applied", i + 1), body)
            msg = b"after reload %d" % i
            c.send(up.ws_frame(0x1, msg, mask=os.urandom(4)))
            self.assertEqual(read_frame(c), (0x1, msg), "the tunnel must stay open, reload %d" % i)
            if i % 2 == 1:
                # A new request for /ws follows the new route (to the other upstream).
                with h.Client(pf.port()) as fresh:
                    r = fresh.request("GET", "/ws-probe")
                    self.assertEqual(r.status, 200, r)
                    self.assertEqual(r.json()["name"], "other")

        stats = ws.stats()
        self.assertEqual(stats["connections"], 1, "the tunnel keeps its one upstream connection")
        self.assertEqual(stats["ws_frames"], 11)
        c.send(up.ws_frame(0x8, b"\x03\xe8", mask=b"wxyz"))
        self.assertEqual(read_frame(c)[0], 0x8)
        self.assertTrue(c.is_closed(3))
        c.close()
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# 6. The file watch
# ---------------------------------------------------------------------------------------------

class FileWatchTest(unittest.TestCase):
    def test_inplace_and_rename_trigger_reloads(self):
        a = h.Upstream("light", name="a")
        self.addCleanup(a.stop)
        b = h.Upstream("light", name="b")
        self.addCleanup(b.stop)
        pf = h.Pilotfish(two_route_policy(a, b))
        self.addCleanup(pf.kill)
        c = cleanup_close(self, h.Client(pf.port()))
        self.assertEqual(get_json(c, "/b/x")["name"], "b")

        def expect_file_event(version, sha, second):
            wait_version(pf, version, 5)
            ev = events(pf)[-1]
            self.assertEqual({k: ev.get(k) for k in ("version", "trigger", "sha256", "outcome")},
                             {"version": version, "trigger": "file", "sha256": sha, "outcome": "applied"})
            self.assertEqual(ev["changes"], changes(routes={"modified": ["ingress: path_prefix=/b/ -> %s" % second]}))
            self.assertEqual(len(events(pf)), version)
            self.assertEqual(get_json(c, "/b/x")["name"], second)

        sha = h.write_policy(pf, two_route_policy(a, b, second="a"), "inplace")
        expect_file_event(2, sha, "a")
        sha = h.write_policy(pf, two_route_policy(a, b, second="b"), "rename")
        expect_file_event(3, sha, "b")
        # After a rename the file is another inode: the watch must still see in-place writes.
        sha = h.write_policy(pf, two_route_policy(a, b, second="a"), "inplace")
        expect_file_event(4, sha, "a")
        sha = h.write_policy(pf, two_route_policy(a, b, second="b"), "rename")
        expect_file_event(5, sha, "b")

        # A burst of writes is one reload, of the last content.
        for i in range(5):
            p = two_route_policy(a, b, second="a")
            p["clusters"][0]["timeout"] = "%ds" % (20 + i)
            sha = h.write_policy(pf, p, "inplace")
        wait_version(pf, 6, 5)
        time.sleep(0.6)
        evs = events(pf)
        self.assertEqual(len(evs), 6, [(e["version"], e["sha256"]) for e in evs])
        self.assertEqual((evs[-1]["sha256"], evs[-1]["trigger"]), (sha, "file"))
        self.assertEqual(evs[-1]["changes"], changes(routes={"modified": ["ingress: path_prefix=/b/ -> a"]},
                                                     clusters={"modified": ["a"]}))
        self.assertEqual(config(pf)["version"], 6)
        self.assertEqual(reload_metrics(pf)[:2], (5, 0))
        self.assertEqual(read_jsonl(history_file(pf)), evs)
        c.close()
        pf.stop_and_check(self)

    def test_history_file_setting(self):
        a = h.Upstream("light", name="a")
        self.addCleanup(a.stop)
        b = h.Upstream("light", name="b")
        self.addCleanup(b.stop)
        # A relative path resolves against the policy file's folder.
        p = two_route_policy(a, b)
        p["policy_history"] = "events.jsonl"
        pf = h.Pilotfish(p)
        self.addCleanup(pf.kill)
        p2 = two_route_policy(a, b, second="a")
        p2["policy_history"] = "events.jsonl"
        self.assertEqual(write_and_reload(pf, p2)[2].get("outcome"), "applied")
        path = os.path.join(os.path.dirname(pf.config), "events.jsonl")
        h.wait_for(lambda: len(read_jsonl(path)) == 2, 3, what="2 lines in " + path)
        self.assertEqual(read_jsonl(path), events(pf))
        self.assertFalse(os.path.exists(history_file(pf)))
        pf.stop_and_check(self)

        # off: no file at all.
        p["policy_history"] = "off"
        pf = h.Pilotfish(p)
        self.addCleanup(pf.kill)
        p2["policy_history"] = "off"
        self.assertEqual(write_and_reload(pf, p2)[2].get("outcome"), "applied")
        self.assertEqual(len(events(pf)), 2)
        time.sleep(0.3)
        self.assertEqual([f for f in os.listdir(os.path.dirname(pf.config)) if "history" in f or f.endswith(".jsonl")],
                         [])
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# 7, 8. Pooled upstream connections and snapshots of requests in flight
# ---------------------------------------------------------------------------------------------

class SnapshotTest(unittest.TestCase):
    def test_pooled_connections_kept_when_endpoints_unchanged(self):
        a = h.Upstream("echo", name="a")
        self.addCleanup(a.stop)
        b = h.Upstream("echo", name="b")
        self.addCleanup(b.stop)

        def policy(timeout="15s", retries=1, extra_route=False, app_upstream=a):
            routes = [{"match": {"path_prefix": "/new/"}, "cluster": "spare"}] if extra_route else []
            routes.append({"cluster": "app"})
            return {"version": 1, "admin": {"address": "127.0.0.1:0"}, "workers": 2, "access_log": "off",
                    "listeners": [{"name": "ingress", "address": "127.0.0.1:0", "routes": routes}],
                    "clusters": [{"name": "app", "endpoints": [app_upstream.address], "timeout": timeout,
                                  "retry": {"retries": retries}},
                                 {"name": "spare", "endpoints": [b.address]}]}

        pf = h.Pilotfish(policy())
        self.addCleanup(pf.kill)
        c = cleanup_close(self, h.Client(pf.port()))
        first = get_json(c, "/one")
        self.assertEqual(a.stats()["connections"], 1)

        _, status, body = write_and_reload(pf, policy(timeout="20s", retries=2))
        self.assertEqual(body.get("changes"), changes(clusters={"modified": ["app"]}), body)
        second = get_json(c, "/two")
        self.assertEqual((second["name"], second["conn"]), ("a", first["conn"]),
                         "the same pooled upstream connection after a reload that kept the endpoints")

        _, status, body = write_and_reload(pf, policy(timeout="20s", retries=2, extra_route=True))
        self.assertEqual(body.get("changes"), changes(routes={"added": ["ingress: path_prefix=/new/ -> spare"]}))
        third = get_json(c, "/three")
        self.assertEqual((third["name"], third["conn"]), ("a", first["conn"]))
        self.assertEqual(get_json(c, "/new/x")["name"], "b")
        stats = a.stats()
        self.assertEqual(stats["connections"], 1, "the upstream saw a new connection")
        self.assertEqual([r["target"] for r in stats["requests"]], ["/one", "/two", "/three"])

        # Endpoints changed: the next request goes to the new endpoint.
        _, status, body = write_and_reload(pf, policy(timeout="20s", retries=2, extra_route=True, app_upstream=b))
        self.assertEqual(body.get("changes"), changes(clusters={"modified": ["app"]}))
        self.assertEqual(get_json(c, "/four")["name"], "b")
        self.assertEqual(a.stats()["connections"], 1)
        c.close()
        pf.stop_and_check(self)

    def test_request_in_flight_keeps_its_snapshot(self):
        u = h.Upstream("echo", name="app")
        self.addCleanup(u.stop)
        pf = h.Pilotfish(h.simple_policy(u, workers=2, cluster={"timeout": "3s"}))
        self.addCleanup(pf.kill)
        c = cleanup_close(self, h.Client(pf.port(), timeout=10))
        c.send(h.build_request("GET", "/slow?ms=1500&n=1"))
        u.wait_requests(1)
        _, status, body = write_and_reload(pf, h.simple_policy(u, workers=2, cluster={"timeout": "500ms"}))
        self.assertEqual((status, body.get("outcome")), (200, "applied"), body)
        self.assertEqual(body.get("changes"), changes(clusters={"modified": ["app"]}))
        # The request in flight started under the 3 s timeout: it completes.
        r = c.read_response(timeout=10)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["target"], "/slow?ms=1500&n=1")
        # The next request on the same connection runs under the new 500 ms timeout.
        # (Under the old 3 s timeout this 1.5 s request would have been answered 200.)
        r = c.request("GET", "/slow?ms=1500&n=2", timeout=10)
        self.assertEqual(r.status, 504, r)
        self.assertEqual(r.header("x-pilotfish-error"), "timeout")
        c.close()
        pf.stop_and_check(self)


class MetricsAcrossReloadsTest(unittest.TestCase):
    def test_kept_names_keep_counting_removed_names_disappear(self):
        a = h.Upstream("echo", name="a")
        self.addCleanup(a.stop)
        b = h.Upstream("echo", name="b")
        self.addCleanup(b.stop)

        def policy(with_side):
            listeners = [{"name": "ingress", "address": "127.0.0.1:0",
                          "routes": [{"match": {"path_prefix": "/slow"}, "cluster": "gone"},
                                     {"cluster": "app"}] if with_side else [{"cluster": "app"}]}]
            clusters = [{"name": "app", "endpoints": [a.address]}]
            if with_side:
                listeners.append({"name": "side", "address": "127.0.0.1:0", "routes": [{"cluster": "gone"}]})
                clusters.append({"name": "gone", "endpoints": [b.address]})
            return {"version": 1, "admin": {"address": "127.0.0.1:0"}, "workers": 2, "access_log": "off",
                    "listeners": listeners, "clusters": clusters}

        pf = h.Pilotfish(policy(True))
        self.addCleanup(pf.kill)
        # The first request ingress ever sends to "gone" is in flight across the reload that
        # removes the cluster: when it ends, it must not bring the series back.
        in_flight = cleanup_close(self, h.Client(pf.port(), timeout=10))
        in_flight.send(h.build_request("GET", "/slow?ms=800"))
        b.wait_requests(1)
        for i in range(3):
            self.assertEqual(h.request(pf.port(), "GET", "/x%d" % i).status, 200)
        self.assertEqual(h.request(pf.port("side"), "GET", "/s").status, 200)
        # A response can reach the client a moment before its worker records it: wait for it.
        def counted(m):
            return (h.sample(m, "pilotfish_requests_total", listener="side", route="", cluster="gone", code="200") == 1 and
                    h.sample(m, "pilotfish_requests_total", listener="ingress", route="", cluster="app", code="200") == 3)
        h.wait_for(lambda: counted(h.metrics(pf)), 5.0, what="the requests counted")
        before = h.metrics(pf)
        self.assertEqual(h.sample(before, "pilotfish_requests_total", listener="ingress", route="", cluster="app", code="200"), 3)
        self.assertEqual(h.sample(before, "pilotfish_requests_total", listener="side", route="", cluster="gone", code="200"), 1)
        self.assertIsNone(h.sample(before, "pilotfish_requests_total", listener="ingress", route="", cluster="gone", code="200"))

        _, status, body = write_and_reload(pf, policy(False))
        self.assertEqual((status, body.get("outcome")), (200, "applied"), body)
        self.assertEqual(in_flight.read_response(timeout=10).status, 200)
        self.assertEqual(h.request(pf.port(), "GET", "/after").status, 200)
        h.wait_for(lambda: h.sample(h.metrics(pf), "pilotfish_requests_total", listener="ingress", route="", cluster="app",
                                    code="200") == 4, 5.0, what="/after counted")
        text = h.admin_request(pf, "/metrics")[2]
        after = h.parse_samples(text)
        # Kept names: counters carry on from where they were.
        self.assertEqual(h.sample(after, "pilotfish_requests_total", listener="ingress", route="", cluster="app", code="200"), 4)
        self.assertEqual(h.sample(after, "pilotfish_downstream_connections_total", listener="ingress"),
                         h.sample(before, "pilotfish_downstream_connections_total", listener="ingress") + 1)
        # Removed names: no series of theirs is left.
        leftovers = [(n, dict(l)) for (n, l) in after
                     if dict(l).get("listener") == "side" or dict(l).get("cluster") == "gone"]
        self.assertEqual(leftovers, [])
        self.assertEqual(h.sample(after, "pilotfish_policy_reloads_total", result="applied"), 1)
        self.assertEqual(h.sample(after, "pilotfish_policy_info", version="2", sha256=body["sha256"]), 1)
        r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        pf.stop_and_check(self)


class ListenerClashTest(unittest.TestCase):
    def test_explicit_address_of_a_kept_port_zero_listener_is_rejected(self):
        u = h.Upstream("echo", name="app")
        self.addCleanup(u.stop)
        policy = h.simple_policy(u, workers=2)
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        port = pf.port()
        clash = h.simple_policy(u, workers=2)
        clash["listeners"].append({"name": "x", "address": "127.0.0.1:%d" % port, "routes": [{"cluster": "app"}]})
        _, status, body = write_and_reload(pf, clash)
        self.assertEqual((status, body.get("outcome")), (422, "rejected"), body)
        self.assertIn("listener x: 127.0.0.1:%d is already the address of listener ingress" % port, body["errors"][0])
        # The running policy stays and its listener serves; a second reload of the same file
        # (a bind problem, not the content) is tried again and rejected again.
        self.assertEqual(h.request(port, "GET", "/still").status, 200)
        status, doc = post_reload(pf)
        self.assertEqual((status, doc.get("outcome")), (422, "rejected"), doc)
        self.assertEqual(config(pf)["version"], 1)
        pf.stop_and_check(self)


class KeysOfTheirOwnTest(unittest.TestCase):
    def test_a_rate_limit_change_is_recorded_as_a_change(self):
        # Once missed: a reload that only changed a rate limit was applied with "no changes" in
        # its answer, its log line and /policy/history.
        policy = two_route_policy(*light_upstreams(self, "a", "b"))
        policy["listeners"][0]["rate_limit"] = {"rate": 5}
        policy["listeners"][0]["routes"][0]["rate_limit"] = {"rate": 5}
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)

        policy["listeners"][0]["rate_limit"] = {"rate": 1}
        mark = h.log_mark(pf)
        _, status, body = write_and_reload(pf, policy)
        self.assertEqual((status, body.get("outcome")), (200, "applied"), body)
        want = changes(listeners={"modified": ["ingress"]})
        self.assertEqual(body.get("changes"), want)
        h.wait_log(pf, r"applied version 2, sha256 \w+: listeners: ~ingress$", mark)

        policy["listeners"][0]["routes"][0]["rate_limit"] = {"rate": 1}
        _, status, body = write_and_reload(pf, policy)
        self.assertEqual((status, body.get("outcome")), (200, "applied"), body)
        self.assertEqual(body.get("changes"), changes(routes={"modified": ["ingress: path_prefix=/b/ -> b"]}))

        evs = wait_events(pf, 3)
        self.assertEqual([e.get("changes") for e in evs[1:]], [want, body["changes"]])
        h.wait_for(lambda: read_jsonl(history_file(pf)) == events(pf), 3, what="history file == /policy/history")
        pf.stop_and_check(self)


# ---------------------------------------------------------------------------------------------
# A reload handed to a worker that is busy does not hold up the admin endpoints
# ---------------------------------------------------------------------------------------------

PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
WALL = 0x40000000


def worker_thread_id(pf, index):
    """The kernel thread id of worker `index` (its threads are named pf-worker-N)."""
    task = "/proc/%d/task" % pf.pid
    for tid in os.listdir(task):
        try:
            with open(os.path.join(task, tid, "comm")) as f:
                if f.read().strip() == "pf-worker-%d" % index:
                    return int(tid)
        except OSError:
            continue
    raise AssertionError("no thread named pf-worker-%d in %s" % (index, task))


class StoppedThread:
    """Stops one thread of another process with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT): the
    thread stays where it is, as a worker stuck in a long callback would, while the process's
    other threads run on. Every ptrace call comes from the thread that made this object (the
    kernel ties a tracee to the tracing thread)."""

    def __init__(self, tid):
        import ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self.tid = tid
        self._call(PTRACE_SEIZE)
        self._call(PTRACE_INTERRUPT)
        _, status = os.waitpid(tid, WALL)
        assert os.WIFSTOPPED(status), "thread %d did not stop: status %#x" % (tid, status)
        self.stopped = True

    def _call(self, request):
        import ctypes
        if self.libc.ptrace(request, self.tid, None, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "ptrace(%#x, %d): %s" % (request, self.tid, os.strerror(err)))

    def resume(self):
        if self.stopped:
            self.stopped = False
            self._call(PTRACE_DETACH)


class BusyWorkerTest(unittest.TestCase):
    def test_admin_answers_while_a_stopped_worker_has_the_reload_to_take(self):
        # Once, the admin loop waited (up to 5 s) for every worker to switch, and /live and
        # /ready waited with it. Now the reload is handed over and the admin loop goes on: with
        # worker 1 stopped, the reload is applied, /ready, /live and /config answer, and only
        # the POST /reload itself waits, until worker 1 runs again and switches.
        u = h.Upstream("echo", name="app")
        self.addCleanup(u.stop)
        policy = h.simple_policy(u, workers=2)
        policy["policy_watch"] = False
        pf = h.Pilotfish(policy)
        self.addCleanup(pf.kill)
        policy["listeners"][0]["routes"] = [{"match": {"path_prefix": "/new/"}, "cluster": "app"}]
        h.write_policy(pf, policy)

        stopped = StoppedThread(worker_thread_id(pf, 1))
        self.addCleanup(stopped.resume)
        mark = h.log_mark(pf)
        answered = threading.Event()

        def reload_and_mark():
            try:
                return post_reload(pf)
            finally:
                answered.set()
        get = h.start_thread(reload_and_mark)
        h.wait_log(pf, r"applied version 2", mark, timeout=15)
        status, _, body = h.admin_request(pf, "/ready")
        self.assertEqual((status, body), (200, "ready\n"))
        status, _, body = h.admin_request(pf, "/live")
        # A worker stopped for more than 5 s is reported, which is an answer too.
        self.assertTrue(status == 200 or body == "worker 1 has not answered for 5 s\n", (status, body))
        self.assertEqual(config(pf)["version"], 2)
        self.assertFalse(answered.is_set(), "POST /reload was answered before worker 1 switched")

        stopped.resume()
        status, doc = get()
        self.assertEqual((status, doc.get("outcome"), doc.get("version")), (200, "applied", 2), doc)
        # Both workers route by the new policy: several connections land on each.
        for i in range(8):
            self.assertEqual(h.request(pf.port(), "GET", "/old/%d" % i).status, 404)
            self.assertEqual(h.request(pf.port(), "GET", "/new/%d" % i).status, 200)
        pf.stop_and_check(self)


if __name__ == "__main__":
    h.main()
