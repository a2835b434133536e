#!/usr/bin/env python3
"""The shop on one machine: a gateway and three services, each service in its own "pod" (a
network namespace) with its app, its own SQLite database and a pilotfish sidecar; mTLS between all
sidecars; the pods' traffic caught by `pilotfish iptables` (payments calls users at users'
service VIP, as apps do, and its sidecar takes the call there).

    hub (the internet: the client)       10.79.0.1
    gateway   pilotfish edge :8000       10.79.0.2   JWT auth, rate limit
    payments  app :8080 + sidecar        10.79.0.3   event-sourced payments.db
    recommendations  app + sidecar       10.79.0.4   recommendations.db
    users     app :8080 + sidecar        10.79.0.5   users.db
    recommendations-v2  app + sidecar    10.79.0.6   the next release of recommendations

  examples/shop/shop.py [--pilotfish build/pilotfish] [--keep]

runs the scenario and prints each step: requests through the gateway (401 without a token); a
canary of recommendations v2 at 10%, then 50%, then 100% of the traffic, by editing the gateway's
YAML, with the split measured by the client and in the gateway's metrics; an outage of v2, during
which the gateway ejects it and answers with a fast 503 while payments keep working; a rollback
to v1 by editing the YAML; a tighter rate limit rolled out the same way, in effect without a
restart; and the metrics that show all of it. Exit 0 when every step
did what it says. Needs root (namespaces, iptables); it removes everything it made."""

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SUBNET = "10.79.0."
PODS = {"gateway": SUBNET + "2", "payments": SUBNET + "3", "recommendations": SUBNET + "4", "users": SUBNET + "5",
        "recommendations-v2": SUBNET + "6"}
SHORT = {"hub": "hub", "gateway": "gate", "payments": "paym", "recommendations": "reco", "users": "user",
         "recommendations-v2": "rec2"}  # in namespace names
VIPS = {"users": "10.96.2.5:80"}
TD = "spiffe://shop.local/ns/shop/sa/"
UID = 1337


def sh(*args, ns=None, check=True, timeout=60, capture=True):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise SystemExit("shop: %s failed: %s%s" % (" ".join(cmd), r.stdout, r.stderr))
    return r


def openssl(*args):
    return sh("openssl", *args).stdout


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Shop:
    def __init__(self, pilotfish, workdir):
        self.bin = os.path.abspath(pilotfish)
        self.dir = workdir
        self.tag = "shop%d" % (os.getpid() % 10000)
        self.ns = {name: self.tag + SHORT[name] for name in ["hub"] + list(PODS)}
        self.canary = None  # recommendations-v2's weight in the gateway's split (None: no split)
        self.gateway_version = 1  # of the gateway's policy, as its log says
        self.procs = {}
        self.steps = []

    # -- the world ---------------------------------------------------------------------------------
    def network(self):
        hub = self.ns["hub"]
        sh("ip", "netns", "add", hub)
        sh("ip", "-n", hub, "link", "set", "lo", "up")
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "addr", "add", SUBNET + "1/24", "dev", "br0")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        for i, (pod, ip) in enumerate(PODS.items()):
            ns = self.ns[pod]
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", hub, "link", "add", "v%d" % i, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", hub, "link", "set", "v%d" % i, "master", "br0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "10.96.0.0/16", "dev", "eth0")  # service VIPs

    def certificates(self):
        d = os.path.join(self.dir, "pki")
        os.makedirs(d)
        self.ca = os.path.join(d, "ca.pem")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-keyout", os.path.join(d, "ca.key"), "-out", self.ca, "-subj", "/CN=shop.local")
        self.certs = {}
        for name in PODS:
            key, csr, cert, ext = (os.path.join(d, name + s) for s in (".key", ".csr", ".pem", ".ext"))
            openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
                    "-out", csr, "-subj", "/CN=" + name)
            with open(ext, "w") as f:
                f.write("subjectAltName=URI:%s%s\nextendedKeyUsage=serverAuth,clientAuth\n" % (TD, name))
            openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", os.path.join(d, "ca.key"),
                    "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert)
            self.certs[name] = (cert, key)
        # The gateway's token issuer: an RSA key, its JWKS, and a token for alice.
        self.jwt_key = os.path.join(d, "issuer.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.jwt_key)
        modulus = openssl("rsa", "-in", self.jwt_key, "-noout", "-modulus").strip().split("=", 1)[1]
        self.jwks = os.path.join(d, "jwks.json")
        with open(self.jwks, "w") as f:
            json.dump({"keys": [{"kty": "RSA", "kid": "shop-1", "alg": "RS256", "n": b64url(bytes.fromhex(modulus)),
                                 "e": "AQAB"}]}, f)
        now = int(time.time())
        self.token = self.sign({"sub": "alice", "iss": "https://auth.shop.local", "aud": "shop",
                                "iat": now, "exp": now + 3600})
        for root, dirs, files in os.walk(self.dir):
            for n in dirs:
                os.chmod(os.path.join(root, n), 0o755)
            for n in files:
                os.chmod(os.path.join(root, n), 0o644)  # read by uid 1337 (demo keys only)

    def sign(self, claims):
        signing_input = b64url(json.dumps({"alg": "RS256", "kid": "shop-1"}).encode()) + "." + \
            b64url(json.dumps(claims).encode())
        data = os.path.join(self.dir, "jwt-input")
        with open(data, "w") as f:
            f.write(signing_input)
        openssl("dgst", "-sha256", "-sign", self.jwt_key, "-out", data + ".sig", data)
        with open(data + ".sig", "rb") as f:
            return signing_input + "." + b64url(f.read())

    def identity(self, name):
        cert, key = self.certs[name]
        return "identity: {cert: %s, key: %s, ca: %s}\n" % (cert, key, self.ca)

    def gateway_policy(self, rate=100, burst=800):
        routes = "".join(
            "      - {match: {path_prefix: /api/%s}, cluster: %s}\n" % (svc, svc) for svc in ("payments", "users"))
        upstreams = ["payments", "recommendations", "users"]
        if self.canary is None:
            routes += "      - {name: recommendations, match: {path_prefix: /api/recommendations}, cluster: recommendations}\n"
        else:
            # The canary: a weighted split between the release and the next one.
            upstreams.append("recommendations-v2")
            routes += f"""      - name: recommendations
        match: {{path_prefix: /api/recommendations}}
        clusters: [{{name: recommendations, weight: {100 - self.canary}}}, {{name: recommendations-v2, weight: {self.canary}}}]
"""
        clusters = "".join(f"""  - name: {svc}
    endpoints: [{PODS[svc]}:8080]
    mtls: {{server_identity: {TD}{svc}}}
    connect_timeout: 500ms
    timeout: 3s
    retry: {{retries: 1, on: [connect-failure, reset, gateway-error]}}
    outlier_detection: {{consecutive_failures: 3, base_ejection_time: 60s}}
""" for svc in upstreams)
        return f"""version: 1
service: gateway
admin: {{address: 127.0.0.1:9901}}
workers: 2
access_log: {self.access_log("gateway")}
{self.identity("gateway")}listeners:
  - name: edge
    address: 0.0.0.0:8000
    auth: {{jwks: {self.jwks}, issuer: "https://auth.shop.local", audience: shop, subject_header: x-user}}
    rate_limit: {{rate: {rate}, burst: {burst}, key: client_address}}
    routes:
{routes}clusters:
{clusters}"""

    def access_log(self, name):
        return os.path.join(self.dir, "logs", name + "-access.log")

    def service_policy(self, name, allow, calls=()):
        outbound_clusters = "".join(f"""  - name: {svc}
    vips: [{VIPS[svc]}]
    endpoints: [{PODS[svc]}:8080]
    mtls: {{server_identity: {TD}{svc}}}
""" for svc in calls)
        return f"""version: 1
service: {name}
admin: {{address: 127.0.0.1:9901}}
workers: 1
access_log: {self.access_log(name)}
wait_for_clusters: [app]
{self.identity(name)}listeners:
  - name: inbound
    address: 0.0.0.0:15006
    intercept: inbound
    mtls: true
    allow: [{", ".join(TD + a for a in allow)}]
    routes: [{{cluster: app}}]
  - name: outbound
    address: 127.0.0.1:15001
    intercept: outbound
    passthrough: false
    routes: [{{cluster: app}}]
clusters:
  - name: app
    endpoints: [127.0.0.1:8080]
{outbound_clusters}"""

    def roll_out(self, **kw):
        """Edits the gateway's YAML, and waits until the running gateway has applied it."""
        self.write("gateway", self.gateway_policy(**kw))
        self.gateway_version += 1
        deadline = time.time() + 10
        while time.time() < deadline and ("applied version %d" % self.gateway_version) not in self.log("pilotfish-gateway"):
            time.sleep(0.1)

    def write(self, name, text):
        path = os.path.join(self.dir, name + ".yaml")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.chmod(path + ".tmp", 0o644)
        os.rename(path + ".tmp", path)
        return path

    def start(self, name, ns, args, uid=None):
        log = open(os.path.join(self.dir, name + ".log"), "wb")
        prefix = ["ip", "netns", "exec", ns]
        if uid is not None:
            prefix += ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"]
        self.procs[name] = (subprocess.Popen(prefix + args, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL), log)

    def stop(self, name, sig=signal.SIGTERM):
        proc, log = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        return proc.returncode

    def log(self, name):
        with open(os.path.join(self.dir, name + ".log"), "rb") as f:
            return f.read().decode(errors="replace")

    def up(self):
        apps = {"payments": ["--users", "http://" + VIPS["users"].split(":")[0]],
                "recommendations": [], "users": [], "recommendations-v2": ["--version", "2"]}
        data = os.path.join(self.dir, "data")
        os.makedirs(data)
        os.chmod(data, 0o777)
        os.makedirs(os.path.join(self.dir, "logs"))
        os.chmod(os.path.join(self.dir, "logs"), 0o777)  # the sidecars' access logs (uid 1337)
        for svc, extra in apps.items():
            script = os.path.join(HERE, svc.split("-")[0] + ".py")
            self.start("app-" + svc, self.ns[svc], [sys.executable, script, "--port", "8080",
                                                    "--db", os.path.join(data, svc + ".db")] + extra)
        allow = {"payments": ["gateway"], "recommendations": ["gateway"], "users": ["gateway", "payments"],
                 "recommendations-v2": ["gateway"]}
        calls = {"payments": ["users"]}
        for svc in apps:
            policy = self.write(svc, self.service_policy(svc, allow[svc], calls.get(svc, ())))
            sh(self.bin, "iptables", "--policy", policy, "--uid", UID, "--ipv4-only", "--apply",
               ns=self.ns[svc])
            self.start("pilotfish-" + svc, self.ns[svc], [self.bin, "run", "--config", policy], uid=UID)
        self.gateway_yaml = self.write("gateway", self.gateway_policy())
        self.start("pilotfish-gateway", self.ns["gateway"], [self.bin, "run", "--config", self.gateway_yaml], uid=UID)
        for pod in PODS:
            sh(self.bin, "wait-ready", "--admin", "127.0.0.1:9901", "--timeout", "20s", ns=self.ns[pod])

    def down(self):
        for name in list(self.procs):
            self.stop(name)
        for ns in self.ns.values():
            sh("ip", "netns", "del", ns, check=False)

    # -- the scenario --------------------------------------------------------------------------------
    def call(self, method, path, body=None, token=True, timeout=10):
        """A client on the internet (the hub) calls the gateway: (status, JSON or text, seconds)."""
        args = ["curl", "-s", "--max-time", str(timeout), "-X", method, "-w", "\n%{http_code} %{time_total}",
                "http://%s:8000%s" % (PODS["gateway"], path)]
        if token:
            args += ["-H", "Authorization: Bearer " + self.token]
        if body is not None:
            args += ["-H", "content-type: application/json", "--data", json.dumps(body)]
        out = sh(*args, ns=self.ns["hub"], check=False, timeout=timeout + 10).stdout
        text, _, tail = out.rpartition("\n")
        code, seconds = tail.split()
        try:
            text = json.loads(text)
        except ValueError:
            pass
        return int(code), text, float(seconds)

    def versions(self, count):
        """`count` recommendation requests from the hub over one keep-alive connection: how many
        each version answered ({version: n}; 0 for an answer that was not a 200)."""
        script = """
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], 8000, timeout=10)
seen = {}
for _ in range(int(sys.argv[2])):
    c.request("GET", "/api/recommendations/alice", headers={"Authorization": "Bearer " + sys.argv[3]})
    r = c.getresponse()
    body = r.read()
    v = json.loads(body)["version"] if r.status == 200 else 0
    seen[v] = seen.get(v, 0) + 1
print(json.dumps(seen))
"""
        out = sh(sys.executable, "-c", script, PODS["gateway"], str(count), self.token, ns=self.ns["hub"]).stdout
        return {int(k): v for k, v in json.loads(out).items()}

    def split_in_metrics(self):
        """The gateway's answers on the recommendations route, by cluster (200s)."""
        g = self.metrics("gateway")
        return {c: g.get('pilotfish_requests_total{listener="edge",route="recommendations",cluster="%s",code="200"}' % c, 0)
                for c in ("recommendations", "recommendations-v2")}

    def access_lines(self, name):
        try:
            with open(self.access_log(name)) as f:
                return [json.loads(line) for line in f if line.strip()]
        except OSError:
            return []

    def one_trace(self):
        """The last payment's trace, hop by hop: the gateway started it (the client sent none),
        payments' sidecar took it in, payments passed the traceparent on in its call to users,
        which its sidecar took out and users' sidecar in. [(sidecar, listener, path)], or None."""
        deadline = time.time() + 5  # access logs are written in batches, every 200 ms at most
        while time.time() < deadline:
            payments = [e for e in self.access_lines("gateway") if e["path"] == "/api/payments" and e["status"] == 201]
            if payments:
                trace = payments[-1]["trace_id"]
                hops = [(name, e["listener"], e["path"]) for name in ("gateway", "payments", "users")
                        for e in self.access_lines(name) if e["trace_id"] == trace]
                if len(hops) >= 4:
                    return hops
            time.sleep(0.1)
        return None

    def metrics(self, pod):
        out = sh("curl", "-s", "http://127.0.0.1:9901/metrics", ns=self.ns[pod]).stdout
        samples = {}
        for line in out.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def step(self, what, ok, detail=""):
        self.steps.append({"step": what, "ok": bool(ok), "detail": detail})
        print("%s %s%s" % ("ok  " if ok else "FAIL", what, (": " + str(detail)) if detail else ""), flush=True)

    def scenario(self):
        code, body, _ = self.call("GET", "/api/recommendations/alice", token=False)
        self.step("no token: 401 at the gateway", code == 401, code)
        code, body, _ = self.call("GET", "/api/recommendations/alice")
        self.step("recommendations through gateway and mTLS", code == 200 and body["items"] == ["teapot", "cups"], body)
        code, body, _ = self.call("POST", "/api/payments/deposits", {"account": "alice", "amount": 500})
        self.step("deposit (an event appended)", code == 201, body)
        code, body, _ = self.call("POST", "/api/payments", {"account": "alice", "amount": 120})
        self.step("payment: payments asks users at its VIP, intercepted, over mTLS",
                  code == 201 and body.get("by") == "alice", body)
        hops = self.one_trace()
        self.step("one trace through the hops: the payment's trace id in the gateway's, payments' and users' "
                  "access logs", hops is not None and len(hops) == 4, hops)
        code, body, _ = self.call("POST", "/api/payments", {"account": "mallory", "amount": 1})
        self.step("payment for an unknown user: users says 404, payments 422", code == 422, body)
        code, body, _ = self.call("GET", "/api/payments/balances/alice")
        self.step("balance derived from the events", code == 200 and body["balance"] == 380, body)

        # A canary of recommendations v2: 10%, then 50%, then 100%, by editing the gateway's YAML.
        # Each stage: 400 requests; the client counts the versions that answered, and the gateway's
        # metrics count the same split. Binomial bounds 5 standard deviations wide.
        for weight, low, high in ((10, 10, 70), (50, 150, 250), (100, 400, 400)):
            self.canary = weight
            before = self.split_in_metrics()
            self.roll_out()
            seen = self.versions(400)
            after = self.split_in_metrics()
            counted = {c: after[c] - before[c] for c in after}
            self.step("canary at %d%%: v2 answered %d of 400 (gateway metrics: %d)" % (
                weight, seen.get(2, 0), counted["recommendations-v2"]),
                seen.get(0, 0) == 0 and low <= seen.get(2, 0) <= high and
                counted == {"recommendations": seen.get(1, 0), "recommendations-v2": seen.get(2, 0)}, seen)

        # An outage: v2, now taking every request, dies. Its sidecar answers 503; the gateway ejects it.
        self.stop("app-recommendations-v2", signal.SIGKILL)
        codes = [self.call("GET", "/api/recommendations/alice")[0] for _ in range(6)]
        self.step("recommendations down: 503s", all(c == 503 for c in codes), codes)
        def seen_by_recommendations():  # requests v2's sidecar's inbound listener has answered
            return sum(v for k, v in self.metrics("recommendations-v2").items()
                       if k.startswith("pilotfish_requests_total{") and 'listener="inbound"' in k)
        before = seen_by_recommendations()
        fast = [self.call("GET", "/api/recommendations/alice")[:2] for _ in range(5)]
        self.step("breaker open: the gateway answers 503 no_healthy_upstream itself, sending nothing on",
                  all(c == 503 and "no_healthy_upstream" in str(b) for c, b in fast) and
                  seen_by_recommendations() == before, fast)
        ok = [self.call("POST", "/api/payments", {"account": "alice", "amount": 10})[0] for _ in range(5)]
        self.step("payments keep working meanwhile", ok == [201] * 5, ok)

        # The rollback: every request back to v1, by editing the YAML.
        self.canary = 0
        self.roll_out()
        seen = self.versions(20)
        self.step("rolled back to v1 by editing YAML: every answer v1's", seen == {1: 20}, seen)

        # A tighter rate limit, rolled out by editing the gateway's YAML: no restart.
        pid = self.procs["pilotfish-gateway"][0].pid
        self.roll_out(rate=1, burst=3)
        codes = [self.call("GET", "/api/payments/balances/alice")[0] for _ in range(6)]
        self.step("rate limit rolled out by editing YAML: 429s, same process",
                  codes.count(429) >= 2 and codes[0] == 200 and self.procs["pilotfish-gateway"][0].pid == pid, codes)

        g = self.metrics("gateway")
        shown = {
            "outlier_ejections_total{recommendations-v2}":
                g.get('pilotfish_outlier_ejections_total{cluster="recommendations-v2"}'),
            "endpoints_ejected{recommendations-v2}": g.get('pilotfish_endpoints_ejected{cluster="recommendations-v2"}'),
            "requests_total{route=recommendations, v1 200}": g.get(
                'pilotfish_requests_total{listener="edge",route="recommendations",cluster="recommendations",code="200"}'),
            "requests_total{route=recommendations, v2 200}": g.get(
                'pilotfish_requests_total{listener="edge",route="recommendations",cluster="recommendations-v2",code="200"}'),
            "rate_limited_total{edge}": g.get('pilotfish_rate_limited_total{listener="edge"}'),
            "auth_failures_total{edge}": g.get('pilotfish_auth_failures_total{listener="edge"}'),
            "tls_handshakes outbound ok": g.get('pilotfish_tls_handshakes_total{direction="outbound",result="ok"}'),
            "policy_reloads applied": g.get('pilotfish_policy_reloads_total{result="applied"}'),
        }
        p = self.metrics("payments")
        u = self.metrics("users")
        shown["payments inbound mTLS handshakes"] = p.get('pilotfish_tls_handshakes_total{direction="inbound",result="ok"}')
        shown["payments -> users outbound mTLS"] = p.get('pilotfish_tls_handshakes_total{direction="outbound",result="ok"}')
        shown["users inbound mTLS handshakes"] = u.get('pilotfish_tls_handshakes_total{direction="inbound",result="ok"}')
        self.step("the metrics show it", shown["outlier_ejections_total{recommendations-v2}"] >= 1 and
                  shown["endpoints_ejected{recommendations-v2}"] == 1 and shown["rate_limited_total{edge}"] >= 2 and
                  shown["requests_total{route=recommendations, v2 200}"] >= 600 and
                  shown["requests_total{route=recommendations, v1 200}"] >= 20 and
                  shown["auth_failures_total{edge}"] >= 1 and shown["policy_reloads applied"] == 5 and
                  shown["payments -> users outbound mTLS"] >= 1 and shown["users inbound mTLS handshakes"] >= 1,
                  shown)
        return all(s["ok"] for s in self.steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pilotfish", default=os.path.join(ROOT, "build", "pilotfish"))
    ap.add_argument("--json", help="also write the steps as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, policies)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("shop: needs root (network namespaces, iptables)")
    workdir = tempfile.mkdtemp(prefix="pf-shop-")
    os.chmod(workdir, 0o755)
    shop = Shop(args.pilotfish, workdir)
    ok = False
    try:
        shop.network()
        shop.certificates()
        shop.up()
        ok = shop.scenario()
    finally:
        shop.down()
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"ok": ok, "steps": shop.steps, "logs": {n: shop.log(n)[-2000:] for n in
                           ("pilotfish-gateway", "pilotfish-payments", "pilotfish-users")
                           if os.path.exists(os.path.join(workdir, n + ".log"))}}, f)
        if args.keep:
            print("work folder:", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("shop scenario:", "ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
