#!/usr/bin/env python3
"""The mesh in a box: transparent interception across network namespaces.

Three "pods" (network namespaces with a veth each on a bridge in a fourth, hub, namespace):
A runs a client and a pilotfish; B and C each run an HTTP app, a line-echo app and a
pilotfish. Every pod's rules come from `pilotfish iptables --apply` inside it, and pilotfish runs
as its own uid (1337) so its connections are not redirected. Proven:

- a plain `curl http://<service vip>/` in A reaches the app in B or C through both sidecars, over
  mTLS: B's sidecar counts inbound handshakes and its app sees A's SPIFFE ID in
  x-forwarded-client-cert;
- a non-HTTP protocol (a line echo, the client speaks first) passes through the same way, and
  an address no cluster claims is passed through as plain TCP;
- killing the app in B makes A's sidecar eject B and serve from C with no failed request;
- `pilotfish iptables --clean` removes exactly what --apply added;
- nothing leaks: the test removes every namespace it made (and so every veth, the bridge and
  every rule in them), and checks that none is left.

It needs root (network namespaces, iptables) and fails loudly where it cannot make them."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

UID = 1337
TD = "spiffe://mesh.local/ns/shop/sa/"
SUBNET = "10.77.0."
HUB_IP = SUBNET + "1"
POD_IPS = {"a": SUBNET + "2", "b": SUBNET + "3", "c": SUBNET + "4"}
WEB_VIP = "10.96.0.10:80"
ECHO_VIP = "10.96.0.11:9000"
UPSTREAM_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream.py")


def run(*args, check=True, ns=None, timeout=30, input=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
    return r


def namespaces():
    r = run("ip", "netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


class Proc:
    """A process in a namespace, with its output in a file."""

    def __init__(self, ns, args, name, workdir, uid=None):
        self.name = name
        self.log_path = os.path.join(workdir, name + ".log")
        self.log_file = open(self.log_path, "wb")
        prefix = ["ip", "netns", "exec", ns]
        if uid is not None:
            prefix += ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"]
        self.proc = h.spawn(prefix + list(args), stdout=self.log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        rc = h.kill_proc(self.proc, sig, timeout)
        self.log_file.close()
        return rc


class MeshTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise AssertionError("test_mesh needs root to make network namespaces and iptables rules")
        for tool in ("ip", "iptables", "ip6tables", "setpriv", "curl"):
            if not shutil.which(tool):
                raise AssertionError("test_mesh needs %s (scripts/install-deps.sh installs it)" % tool)
        cls.tag = "pfm%d" % (os.getpid() % 100000)
        # What the test's own namespace looks like: it must look the same afterwards.
        cls.root_rules = run("iptables-save").stdout + run("ip6tables-save").stdout
        cls.root_links = run("ip", "-o", "link").stdout
        cls.ns = {k: cls.tag + k for k in ("hub", "a", "b", "c")}
        cls.procs = []
        cls.dir = h.make_tmpdir("pf-mesh-")
        os.chmod(cls.dir, 0o755)
        try:
            cls.make_network()
            cls.make_certs()
            cls.start_pods()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        problems = []
        for p in reversed(getattr(cls, "procs", [])):
            rc = p.stop()
            if p.name.startswith("pilotfish"):
                log = p.log()
                if rc != 0 or "ERROR: AddressSanitizer" in log or "runtime error:" in log or "handles still open" in log:
                    problems.append("%s exited %s:\n%s" % (p.name, rc, log[-3000:]))
        for ns in getattr(cls, "ns", {}).values():
            run("ip", "netns", "del", ns, check=False)
        left = [n for n in namespaces() if n.startswith(getattr(cls, "tag", "none"))]
        assert not left, "namespaces left behind: %s" % left
        if hasattr(cls, "root_rules"):
            strip = lambda t: [l for l in t.splitlines() if l and not l.startswith("#") and not l.startswith(":")]
            assert strip(run("iptables-save").stdout + run("ip6tables-save").stdout) == strip(cls.root_rules), \
                "the test changed the rules of its own namespace"
            names = lambda t: sorted(re.findall(r"^\d+: ([^:@]+)", t, re.M))
            assert names(run("ip", "-o", "link").stdout) == names(cls.root_links), \
                "the test left links in its own namespace"
        assert not problems, "\n".join(problems)

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def make_network(cls):
        hub = cls.ns["hub"]
        run("ip", "netns", "add", hub)
        run("ip", "-n", hub, "link", "set", "lo", "up")
        run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", hub, "addr", "add", HUB_IP + "/24", "dev", "br0")
        run("ip", "-n", hub, "link", "set", "br0", "up")
        for pod in ("a", "b", "c"):
            ns = cls.ns[pod]
            run("ip", "netns", "add", ns)
            run("ip", "-n", hub, "link", "add", "v" + pod, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", hub, "link", "set", "v" + pod, "master", "br0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", POD_IPS[pod] + "/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            # Service VIPs exist only as routes: interception answers for them.
            run("ip", "-n", ns, "route", "add", "10.96.0.0/16", "dev", "eth0")

    @classmethod
    def make_certs(cls):
        pki = h.Pki(os.path.join(cls.dir, "pki"))
        cls.pki = pki
        cls.certs = {pod: pki.leaf(pod, uris=[TD + ("client" if pod == "a" else "web")]) for pod in ("a", "b", "c")}
        for root, dirs, files in os.walk(cls.dir):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)  # read by uid 1337 (test keys only)

    @classmethod
    def write_policy(cls, pod, text):
        path = os.path.join(cls.dir, "policy-%s.yaml" % pod)
        cert, key = cls.certs[pod]
        with open(path, "w") as f:
            f.write(text.replace("IDENTITY", "{cert: %s, key: %s, ca: %s}" % (cert, key, cls.pki.cert)))
        os.chmod(path, 0o644)
        return path

    @classmethod
    def start_pods(cls):
        b_ip, c_ip = POD_IPS["b"], POD_IPS["c"]
        cls.policy_a = cls.write_policy("a", f"""version: 1
service: client
admin: {{address: 127.0.0.1:9901}}
workers: 1
log_level: debug
identity: IDENTITY
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    intercept: outbound
    routes: [{{cluster: web}}]
clusters:
  - name: web
    vips: [{WEB_VIP}]
    endpoints: [{b_ip}:8080, {c_ip}:8080]
    mtls: {{server_identity: {TD}web}}
    connect_timeout: 500ms
    retry: {{retries: 2, on: [connect-failure, reset, gateway-error]}}
    outlier_detection: {{consecutive_failures: 2, base_ejection_time: 30s}}
  - name: echo
    vips: [{ECHO_VIP}]
    endpoints: [{b_ip}:9000, {c_ip}:9000]
    mtls: {{server_identity: {TD}web}}
""")
        for pod in ("b", "c"):
            cls.write_policy(pod, f"""version: 1
service: web
admin: {{address: 127.0.0.1:9901}}
workers: 1
log_level: debug
identity: IDENTITY
listeners:
  - name: inbound
    address: 0.0.0.0:15006
    intercept: inbound
    mtls: true
    allow: [{TD}client]
    routes: [{{cluster: app}}]
clusters:
  - name: app
    endpoints: [127.0.0.1:8080]
""")
        cls.apps = {}
        for pod in ("b", "c"):
            ns = cls.ns[pod]
            web = Proc(ns, [sys.executable, UPSTREAM_PY, "--mode", "echo", "--port", "8080", "--name", "web-" + pod,
                            "--stats", os.path.join(cls.dir, "stats-%s.json" % pod)], "web-" + pod, cls.dir)
            echo = Proc(ns, [sys.executable, UPSTREAM_PY, "--mode", "tcpecho", "--port", "9000", "--name",
                             "echo-" + pod], "echo-" + pod, cls.dir)
            cls.procs += [web, echo]
            cls.apps[pod] = web
        # A plain TCP echo outside every pod (in the hub): an address no cluster claims.
        cls.outside = Proc(cls.ns["hub"], [sys.executable, UPSTREAM_PY, "--mode", "tcpecho", "--port", "7000",
                                           "--name", "outside"], "outside", cls.dir)
        cls.procs.append(cls.outside)
        for pod in ("a", "b", "c"):
            r = run(h.BIN, "iptables", "--policy", os.path.join(cls.dir, "policy-%s.yaml" % pod), "--uid", str(UID),
                    "--ipv4-only", "--apply", ns=cls.ns[pod])
            assert "applied" in r.stdout, r.stdout + r.stderr
        cls.sidecars = {}
        for pod in ("b", "c", "a"):
            p = Proc(cls.ns[pod], [h.BIN, "run", "--config", os.path.join(cls.dir, "policy-%s.yaml" % pod)],
                     "pilotfish-" + pod, cls.dir, uid=UID)
            cls.procs.append(p)
            cls.sidecars[pod] = p
        for pod in ("b", "c", "a"):
            h.wait_for(lambda pod=pod: "pilotfish ready" in cls.sidecars[pod].log(), 10,
                       what="pilotfish in pod %s to start" % pod)
        # The hub's echo listens on 127.0.0.1 (upstream.py binds loopback): give it the hub's address.
        run("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-d", HUB_IP, "--dport", "7000", "-j",
            "DNAT", "--to-destination", "127.0.0.1:7000", ns=cls.ns["hub"])
        run("sysctl", "-qw", "net.ipv4.conf.br0.route_localnet=1", ns=cls.ns["hub"])
        for pod in ("b", "c"):
            h.wait_for(lambda pod=pod: run("curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8080/",
                                           ns=cls.ns[pod], check=False).returncode == 0, 10,
                       what="the app in pod %s" % pod)

    # -- helpers -------------------------------------------------------------------------------
    def curl(self, url, pod="a", timeout=10):
        r = run("curl", "-sS", "--max-time", str(timeout), "-w", "\n%{http_code}", url, ns=self.ns[pod], check=False,
                timeout=timeout + 10)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body, r.stderr

    def metrics(self, pod):
        r = run("curl", "-s", "http://127.0.0.1:9901/metrics", ns=self.ns[pod])
        return h.parse_samples(r.stdout)

    def line_echo(self, address, lines, pod="a"):
        host, port = address.rsplit(":", 1)
        script = ("import socket,sys\n"
                  "s=socket.create_connection((%r,%s),timeout=10)\n"
                  "out=b''\n"
                  "for line in %r:\n"
                  "    s.sendall(line.encode()+b'\\n')\n"
                  "    got=b''\n"
                  "    while not got.endswith(b'\\n'):\n"
                  "        d=s.recv(4096)\n"
                  "        if not d: break\n"
                  "        got+=d\n"
                  "    out+=got\n"
                  "s.shutdown(socket.SHUT_WR)\n"
                  "rest=b''\n"
                  "while True:\n"
                  "    d=s.recv(4096)\n"
                  "    if not d: break\n"
                  "    rest+=d\n"
                  "sys.stdout.write(out.decode()+'|'+rest.decode())\n") % (host, port, lines)
        r = run(sys.executable, "-c", script, ns=self.ns[pod], check=False, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    # -- tests ---------------------------------------------------------------------------------
    def test_1_http_through_both_sidecars_over_mtls(self):
        served = set()
        for i in range(6):
            code, body, err = self.curl("http://%s/hello/%d" % (WEB_VIP.split(":")[0], i))
            self.assertEqual(code, 200, err + body + self.sidecars["a"].log()[-3000:])
            reply = json.loads(body)
            served.add(reply["name"])
            headers = {k.lower(): v for k, v in reply["headers"]}
            xfcc = headers.get("x-forwarded-client-cert", "")
            self.assertIn("URI=%sclient;" % TD, xfcc)
            self.assertTrue(xfcc.startswith("By=%sweb;" % TD), xfcc)
            self.assertEqual(headers.get("x-forwarded-proto"), "https")
        self.assertEqual(served, {"web-b", "web-c"}, "round robin over both replicas")
        for pod in ("b", "c"):
            m = self.metrics(pod)
            self.assertGreaterEqual(h.sample(m, "pilotfish_tls_handshakes_total", direction="inbound", result="ok"), 1)
        m = self.metrics("a")
        self.assertGreaterEqual(h.sample(m, "pilotfish_tls_handshakes_total", direction="outbound", result="ok"), 2)
        self.assertEqual(h.sample(m, "pilotfish_requests_total", listener="outbound", route="", cluster="web", code="200"), 6)

    def test_2_line_echo_passes_through(self):
        out = self.line_echo(ECHO_VIP, ["hello", "mesh"])
        self.assertEqual(out, "hello\nmesh\n|EOF after 11 bytes\n")
        # The bytes went through B's or C's sidecar over mTLS (its tcp tunnel counted).
        total = sum(h.sample(self.metrics(p), "pilotfish_downstream_connections_total", listener="inbound") or 0
                    for p in ("b", "c"))
        self.assertGreaterEqual(total, 1)

    def test_3_unclaimed_address_passes_through_plain(self):
        out = self.line_echo(HUB_IP + ":7000", ["outside"])
        self.assertEqual(out, "outside\n|EOF after 8 bytes\n")
        log = self.sidecars["a"].log()
        self.assertRegex(log, r"intercepted connection to %s:7000: passthrough to %s:7000" %
                         (re.escape(HUB_IP), re.escape(HUB_IP)))

    def test_4_killed_app_is_ejected_without_failed_requests(self):
        self.apps["b"].stop(signal.SIGKILL)
        codes = []
        for i in range(20):
            code, body, err = self.curl("http://%s/after-kill/%d" % (WEB_VIP.split(":")[0], i))
            codes.append(code)
            if code == 200:
                self.assertEqual(json.loads(body)["name"], "web-c")
        self.assertEqual(codes, [200] * 20, self.sidecars["a"].log()[-3000:])
        m = self.metrics("a")
        self.assertGreaterEqual(h.sample(m, "pilotfish_outlier_ejections_total", cluster="web"), 1)
        self.assertEqual(h.sample(m, "pilotfish_endpoints_ejected", cluster="web"), 1)

    def test_5_iptables_clean_removes_exactly_what_apply_added(self):
        ns = self.ns["c"]
        before = run("iptables-save", "-t", "nat", ns=ns).stdout
        self.assertIn("PILOTFISH_INBOUND", before)
        run(h.BIN, "iptables", "--clean", ns=ns)
        after = run("iptables-save", "-t", "nat", ns=ns).stdout
        self.assertNotIn("PILOTFISH", after)
        self.assertNotIn("PILOTFISH", run("ip6tables-save", "-t", "nat", ns=ns).stdout)
        # And --apply again gives the same rules as the first time.
        run(h.BIN, "iptables", "--policy", os.path.join(self.dir, "policy-c.yaml"), "--uid", str(UID), "--ipv4-only", "--apply",
            ns=ns)
        again = run("iptables-save", "-t", "nat", ns=ns).stdout
        strip = lambda t: [l for l in t.splitlines() if l and not l.startswith("#") and not l.startswith(":")]
        self.assertEqual(strip(again), strip(before))


if __name__ == "__main__":
    h.main()
