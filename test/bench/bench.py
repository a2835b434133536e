#!/usr/bin/env python3
"""pilotfish benchmark: wrk on loopback against the upstream directly, pilotfish, HAProxy and
NGINX, each configured as the same keep-alive reverse proxy.

Pinned as a pod runs: the proxy and the upstream share CPU 0, wrk has CPU 1, so each proxy's
CPU time per request decides its throughput. Targets are interleaved and repeated; the table
gives medians. Not a test: it asserts nothing and is never run by the test suite.

  python3 test/bench/bench.py [--rounds 5] [--duration 5] [--connections 50] [--bin build/pilotfish]

--with-mtls adds two chains of two proxies each, as a mesh hop runs: wrk speaks plain HTTP to
sidecar A, A speaks mTLS to sidecar B, B plain HTTP to the upstream; pilotfish pair against an
HAProxy pair (ssl on both sides of the hop, one thread each). Both proxies of a pair are on the
proxy CPU. Each pair runs twice: the hop in HTTP/1.1, and in HTTP/2 (`-h2`: pilotfish A with
`protocol: auto`, HAProxy A with `alpn h2`; one multiplexed connection carries the hop). It also measures new TLS connections per second into B with `openssl s_time`, full
handshakes and resumed sessions.

The floor (test/bench/floor.cc, built with the tests as build/test/floor) runs in every round: a
byte forwarder that parses nothing, one upstream connection per client connection; the table's
last column is each target's CPU per request over the floor's (the median of per-round ratios).

--with-tap adds pilotfish with a tap (GET /tap) open and read for the whole run: one at the default
100 events a second (`pilotfish tap`), one at 10000.

--with-churn adds pilotfish (and the --baseline-bin build, if given), HAProxy and NGINX with every
request on a new client connection (wrk sends `Connection: close`): the cost of accepting, and of
closing, a connection per request; and pilotfish's CPU over HAProxy's and NGINX's for it.

--with-latency adds unloaded latency: one connection, one request at a time, for the upstream
alone, pilotfish, HAProxy, NGINX and the floor (p50 and p99, and what each adds to the upstream's).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROXY_CPU = "0"
WRK_CPU = "1"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except FileNotFoundError:
            pass
    return total / TICK


def children(pid):
    """The pids of a process and its children (nginx/haproxy master + workers)."""
    out = [pid]
    try:
        for line in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
            out.append(int(line))
    except OSError:
        pass
    return out


class Target:
    def __init__(self, name, port, proc, pids_fn, scrape_port=None, headers=(), tap=None):
        self.name, self.port, self.proc, self.pids_fn = name, port, proc, pids_fn
        self.tap = tap  # (admin port, GET /tap query): a tap held open during the run
        self.headers = list(headers)  # sent with every wrk request
        self.scrape_port = scrape_port  # scrape /metrics here once a second during the run
        self.runs = []
        self.rss_idle = 0
        self.rss_loaded = 0


def parse_latency(text, label):
    m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port, duration, connections, headers=()):
    cmd = ["taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    cmd.append(f"http://127.0.0.1:{port}/")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    out = r.stdout
    m = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": int(m.group(1)) if m else 0,
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": parse_latency(out, "50%"),
        "p99": parse_latency(out, "99%"),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sock_err.group(1) if sock_err else "",
    }


class Scraper:
    """GETs /metrics once a second on a thread, as Prometheus would, until stopped."""

    def __init__(self, port):
        import threading
        import urllib.request
        self.count = 0
        self.done = threading.Event()

        def loop():
            while not self.done.wait(1.0):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    r.read()
                self.count += 1

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join(10)
        return self.count


class Tapper:
    """Holds a GET /tap open during the run and reads everything it sends, as `pilotfish tap`
    (or `--json | jq`) would: the cost of a tap open on the data path."""

    def __init__(self, port, query):
        import threading
        self.bytes = 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(f"GET /tap?{query} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())

        def loop():
            try:
                while True:
                    data = self.sock.recv(1 << 16)
                    if not data:
                        return
                    self.bytes += len(data)
            except OSError:
                return

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)
        return self.bytes


def stop_all(procs, tmp):
    """SIGTERM to each process still running (a kill after 10 s), then the scratch folder goes."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def start(cmd, **kw):
    return subprocess.Popen(["taskset", "-c", PROXY_CPU] + cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kw)


def gateway_tokens(tmp):
    """(alg, JWKS path, token) for RS256 (RSA 2048) and ES256 (P-256), made with test_gateway's Keys."""
    sys.path.insert(0, os.path.join(ROOT, "test", "integration"))
    import test_gateway as g
    keys = g.Keys(tmp)
    now = int(time.time())
    claims = {"sub": "bench", "iss": "bench", "aud": "bench", "exp": now + 3600}
    out = []
    for alg, jwk, kid in (("RS256", keys.jwk_rsa(), "rsa-1"), ("ES256", keys.jwk_ec(), "ec-1")):
        path = os.path.join(tmp, "jwks-%s.json" % alg)
        with open(path, "w") as f:
            json.dump({"keys": [jwk]}, f)
        out.append((alg, path, keys.token(claims, alg=alg, kid=kid)))
    return out


def write(path, text, binary=False):
    with open(path, "wb" if binary else "w") as f:
        f.write(text)
    return path


# Every HAProxy the benchmarks run: one thread, the same timeouts, connections to the upstream reused.
HAPROXY_HEAD = """global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
"""


def plain_pilotfish_policy(tmp, name, port, admin_port, upstream_port):
    """pilotfish as the counting scripts run it (instructions.py, counts.py): one worker, no access
    log, one listener on `port` routing everything to the upstream; the policy file's path."""
    return write(os.path.join(tmp, name + ".yaml"), f"""version: 1
admin: {{address: "127.0.0.1:{admin_port}"}}
workers: 1
access_log: "off"
listeners:
- name: ingress
  address: "127.0.0.1:{port}"
  routes: [{{cluster: app}}]
clusters:
- name: app
  endpoints: ["127.0.0.1:{upstream_port}"]
""")


def upstream_conf(tmp, port):
    """The benchmarks' upstream: an NGINX config (one worker, keep-alive without end) answering a
    small fixed body on 127.0.0.1:`port`; its path."""
    path = os.path.join(tmp, "upstream.conf")
    write(path, f"""worker_processes 1; daemon off; pid {tmp}/up.pid; error_log {tmp}/up-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "hello from upstream\\n"; }} }} }}
""")
    return path


def haproxy_conf(tmp, port, upstream_port):
    """HAProxy as the same keep-alive reverse proxy (one thread, `http-reuse always`); its path."""
    path = os.path.join(tmp, "haproxy.cfg")
    write(path, HAPROXY_HEAD + f"""  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server up 127.0.0.1:{upstream_port}
""")
    return path


def add_mtls_pairs(tmp, procs, targets, up_port, binary):
    """Starts the pilotfish pair and the HAProxy pair for the mTLS rows; returns what
    report_mtls needs (admin ports, certificate paths, B's ports)."""
    sys.path.insert(0, os.path.join(ROOT, "test", "integration"))
    import harness  # Pki: a CA and SPIFFE leaf certificates made with the openssl CLI
    pki = harness.Pki(os.path.join(tmp, "pki"))
    td = "spiffe://bench.local/ns/bench/sa/"
    a_cert, a_key = pki.leaf("a", uris=[td + "a"])
    b_cert, b_key = pki.leaf("b", uris=[td + "b"])
    info = {"pki": pki, "a_cert": a_cert, "a_key": a_key}

    pa, pb, a_admin, b_admin = free_port(), free_port(), free_port(), free_port()
    identity = "identity: {{cert: {}, key: {}, ca: {}}}\n"
    pol_b = write(os.path.join(tmp, "pf-b.yaml"), f"""version: 1
service: bench-b
workers: 1
access_log: off
admin: {{address: 127.0.0.1:{b_admin}}}
{identity.format(b_cert, b_key, pki.cert)}listeners:
  - name: inbound
    address: 127.0.0.1:{pb}
    mtls: true
    allow: [{td}a]
    routes: [{{cluster: app}}]
clusters:
  - name: app
    endpoints: [127.0.0.1:{up_port}]
""")
    b = start([binary, "run", "--config", pol_b])
    procs.append(b)
    wait_port(pb)
    # A speaks HTTP/1.1 to B (the default), or whatever B offers in ALPN (`protocol: auto`: h2,
    # one multiplexed connection): the same B, one pair loaded at a time.
    for name, protocol in (("pilotfish-mtls", "http1"), ("pilotfish-mtls-h2", "auto")):
        port, admin = free_port(), free_port()
        pol_a = write(os.path.join(tmp, name + "-a.yaml"), f"""version: 1
service: bench-a
workers: 1
access_log: off
admin: {{address: 127.0.0.1:{admin}}}
{identity.format(a_cert, a_key, pki.cert)}listeners:
  - name: outbound
    address: 127.0.0.1:{port}
    routes: [{{cluster: b}}]
clusters:
  - name: b
    protocol: {protocol}
    endpoints: [127.0.0.1:{pb}]
    mtls: {{server_identity: {td}b}}
""")
        a = start([binary, "run", "--config", pol_a])
        procs.append(a)
        wait_port(port)
        targets.append(Target(name, port, a, lambda a=a, b=b: [a.pid, b.pid]))
        if protocol == "http1":
            info.update(pf_a_admin=admin)
    info.update(pf_b_admin=b_admin, pf_b_port=pb)

    # HAProxy wants the certificate and its key in one file.
    def combined(cert, key, name):
        with open(cert) as c, open(key) as k:
            return write(os.path.join(tmp, name), c.read() + k.read())
    ha_a_pem, ha_b_pem = combined(a_cert, a_key, "ha-a.pem"), combined(b_cert, b_key, "ha-b.pem")
    ha, hb = free_port(), free_port()
    common = HAPROXY_HEAD + "  option http-keep-alive\n"
    conf_b = write(os.path.join(tmp, "ha-b.cfg"), common + f"""frontend fe
  bind 127.0.0.1:{hb} ssl crt {ha_b_pem} ca-file {pki.cert} verify required alpn h2,http/1.1
  default_backend be
backend be
  server up 127.0.0.1:{up_port}
""")
    hbp = start(["haproxy", "-f", conf_b])
    procs.append(hbp)
    wait_port(hb)
    # As the pilotfish pairs: A speaks HTTP/1.1 to B, or HTTP/2 (ALPN h2).
    for name, alpn in (("haproxy-mtls", "http/1.1"), ("haproxy-mtls-h2", "h2")):
        port = free_port()
        conf_a = write(os.path.join(tmp, name + "-a.cfg"), common + f"""frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server b 127.0.0.1:{hb} ssl crt {ha_a_pem} ca-file {pki.cert} verify required alpn {alpn}
""")
        hap = start(["haproxy", "-f", conf_a])
        procs.append(hap)
        wait_port(port)
        targets.append(Target(name, port, hap, lambda a=hap, b=hbp: children(a.pid) + children(b.pid)))
    info.update(ha_b_port=hb)
    return info


def metric(admin_port, name, **labels):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"pilotfish_{name}{{{want}}} "):
            return float(line.split()[-1])
    return float("nan")


def s_time(port, info, reuse, seconds):
    """New TLS connections per wall-clock second into `port`, each with one GET (openssl s_time
    on the wrk CPU; with TLS 1.3 the session ticket comes after the handshake, so -reuse needs
    the request for there to be a session to resume)."""
    cmd = ["taskset", "-c", WRK_CPU, "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
           "-cert", info["a_cert"], "-key", info["a_key"], "-CAfile", info["pki"].cert,
           "-time", str(seconds), "-www", "/", "-reuse" if reuse else "-new"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    elapsed = time.monotonic() - t0
    n = re.findall(r"(\d+) connections in [\d.]+s", out)
    return (int(n[-1]) / elapsed if n else float("nan")), (int(n[-1]) if n else 0)


def report_mtls(info, args):
    print()
    a, b = info["pf_a_admin"], info["pf_b_admin"]
    print("pilotfish A outbound handshakes: ok %d, failed %d, resumed %d; B inbound ok %d, resumed %d" % (
        metric(a, "tls_handshakes_total", direction="outbound", result="ok"),
        metric(a, "tls_handshakes_total", direction="outbound", result="failed"),
        metric(a, "tls_sessions_resumed_total", direction="outbound"),
        metric(b, "tls_handshakes_total", direction="inbound", result="ok"),
        metric(b, "tls_sessions_resumed_total", direction="inbound")))
    print()
    print("New TLS connections per second into B (openssl s_time, %d s each, medians of %d):" % (
        args.duration, args.rounds))
    print()
    print("| target B | full handshakes/s | resumed sessions/s |")
    print("|---|---|---|")
    rows = {}
    for r in range(args.rounds):
        for name, port in (("pilotfish", info["pf_b_port"]), ("haproxy", info["ha_b_port"])):
            for reuse in (False, True):
                rate, _ = s_time(port, info, reuse, args.duration)
                rows.setdefault((name, reuse), []).append(rate)
    for name in ("pilotfish", "haproxy"):
        print(f"| {name} | {statistics.median(rows[(name, False)]):.0f} | {statistics.median(rows[(name, True)]):.0f} |")


def report_latency(targets, args):
    """Unloaded latency: one connection sending one request at a time (wrk -t1 -c1), targets
    interleaved over the rounds; medians of each round's p50 and p99, and what each adds to the
    upstream's own (the direct row)."""
    runs = {t.name: [] for t in targets}
    for _ in range(args.rounds):
        for t in targets:
            runs[t.name].append(run_wrk(t.port, args.duration, 1))
    print()
    print(f"Unloaded latency: wrk -t1 -c1 -d{args.duration}s, {args.rounds} interleaved rounds, medians")
    print()
    print("| target | p50 us | p99 us | added p50 us | added p99 us |")
    print("|---|---|---|---|---|")
    direct = runs["direct"]
    for t in targets:
        p50 = statistics.median(r["p50"] for r in runs[t.name]) * 1000
        p99 = statistics.median(r["p99"] for r in runs[t.name]) * 1000
        d50 = statistics.median(r["p50"] for r in direct) * 1000
        d99 = statistics.median(r["p99"] for r in direct) * 1000
        added = "- | -" if t.name == "direct" else f"{p50 - d50:+.0f} | {p99 - d99:+.0f}"
        print(f"| {t.name} | {p50:.0f} | {p99:.0f} | {added} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "pilotfish"))
    ap.add_argument("--with-access-log", action="store_true", help="also measure pilotfish with its access log on")
    ap.add_argument("--with-tap", action="store_true",
                    help="also measure pilotfish with a tap (GET /tap) open and read during the load: at the "
                         "default 100 events a second, and at 10000")
    ap.add_argument("--with-scrape", action="store_true",
                    help="also measure pilotfish scraped once a second during the load")
    ap.add_argument("--with-resilience", action="store_true",
                    help="also measure pilotfish with a policy that configures retries, budget, breakers and outlier "
                         "detection explicitly")
    ap.add_argument("--baseline-bin", help="also measure this pilotfish binary (an older build) as 'baseline'")
    ap.add_argument("--with-churn", action="store_true",
                    help="also measure pilotfish (and --baseline-bin), HAProxy and NGINX with a new client connection "
                         "per request")
    ap.add_argument("--with-latency", action="store_true",
                    help="also measure unloaded latency: one connection, one request at a time (wrk -c1), for the "
                         "upstream, pilotfish, HAProxy, NGINX and the floor")
    ap.add_argument("--with-mtls", action="store_true",
                    help="also measure an mTLS hop (plain -> A -> mTLS -> B -> plain) for pilotfish and HAProxy")
    ap.add_argument("--only-mtls", action="store_true", help="measure only the direct upstream and the mTLS pairs")
    ap.add_argument("--with-traffic", action="store_true",
                    help="also measure pilotfish with a 95/5 split, header rules and an authorization rule on the route")
    ap.add_argument("--with-gateway", action="store_true",
                    help="also measure pilotfish with JWT auth (RS256, then ES256) and a rate limit on every request")
    args = ap.parse_args()

    for tool in ("wrk", "haproxy", "nginx", "taskset"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"bench: {tool} is missing: run scripts/install-deps.sh bench")

    tmp = tempfile.mkdtemp(prefix="pf-bench-")
    procs = []
    try:
        # The upstream: NGINX answering a small fixed body, one worker.
        up_port = free_port()
        up_conf = upstream_conf(tmp, up_port)
        up = start(["nginx", "-c", up_conf, "-p", tmp])
        procs.append(up)
        wait_port(up_port)

        targets = [Target("direct", up_port, up, lambda p=up: children(p.pid))]

        resilience = """
    lb: least_request
    connect_timeout: 250ms
    timeout: 3s
    retry:
      retries: 2
      on: [connect-failure, reset, gateway-error, retriable-status-codes]
      status_codes: [503]
      per_try_timeout: 1s
      backoff: {base: 25ms, max: 250ms}
      budget: {ratio: 0.2, min_per_second: 10}
    circuit_breaker: {max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3}
    outlier_detection: {consecutive_failures: 5, base_ejection_time: 30s, max_ejection_time: 300s,
                        max_ejection_percent: 50}
"""

        def add_pilotfish(name, access_log, scrape=False, binary=None, cluster_extra="", listener_extra="",
                          headers=(), routes="[{cluster: upstream}]", more_clusters="", tap=None):
            port = free_port()
            admin_port = free_port()
            pol = os.path.join(tmp, f"{name}.yaml")
            with open(pol, "w") as f:
                f.write(f"""version: 1
service: bench
workers: 1
access_log: {os.path.join(tmp, name + '-access.log') if access_log else 'off'}
admin: {{address: 127.0.0.1:{admin_port}}}
listeners:
  - name: ingress
    address: 127.0.0.1:{port}{listener_extra}
    routes: {routes}
clusters:
  - name: upstream
    endpoints: [127.0.0.1:{up_port}]{cluster_extra}{more_clusters}
""")
            p = start([binary or args.bin, "run", "--config", pol])
            procs.append(p)
            wait_port(port)
            targets.append(Target(name, port, p, lambda p=p: [p.pid], admin_port if scrape else None, headers,
                                  (admin_port, tap) if tap else None))

        if args.only_mtls:
            args.with_mtls = True
        else:
            add_pilotfish("pilotfish", False)
        if args.with_access_log:
            add_pilotfish("pilotfish+log", True)
        if args.with_scrape:
            add_pilotfish("pilotfish+scrape", False, scrape=True)
        if args.with_tap:
            # `pilotfish tap` as a person runs it (100 a second), and one that takes 10000 a second.
            add_pilotfish("pilotfish+tap", False, tap="rate=100")
            add_pilotfish("pilotfish+tap10k", False, tap="rate=10000")
        if args.with_resilience:
            add_pilotfish("pilotfish+resilience", False, cluster_extra=resilience.rstrip())
        if args.baseline_bin:
            add_pilotfish("baseline", False, binary=args.baseline_bin)
        if args.with_churn:
            add_pilotfish("pilotfish-churn", False, headers=["Connection: close"])
            if args.baseline_bin:
                add_pilotfish("baseline-churn", False, binary=args.baseline_bin, headers=["Connection: close"])
        if args.with_traffic:
            # A rollout's route: a 95/5 split (both clusters on the same upstream), header rules
            # both ways and an authorization rule, on every request.
            add_pilotfish("pilotfish+traffic", False, routes="""
      - name: recommendations
        clusters: [{name: upstream, weight: 95}, {name: canary, weight: 5}]
        request_headers: {set: {x-env: canary}, add: {x-route: "${route}"}, remove: [x-debug]}
        response_headers: {set: {server: shop}, remove: [x-powered-by]}
        authorization: {deny: [{paths: [{prefix: /internal/}]}], allow: [{methods: [GET, HEAD]}]}""",
                          more_clusters=f"""
  - name: canary
    endpoints: [127.0.0.1:{up_port}]""")
        if args.with_gateway:
            for alg, jwks, token in gateway_tokens(tmp):
                add_pilotfish("pilotfish+auth " + alg, False, listener_extra=f"""
    auth: {{jwks: {jwks}, issuer: bench, audience: bench}}
    rate_limit: {{rate: 1000000, burst: 1000000}}""", headers=["Authorization: Bearer " + token])

        mtls_info = {}
        if args.with_mtls:
            mtls_info = add_mtls_pairs(tmp, procs, targets, up_port, args.bin)

        ha_port = free_port()
        ha_conf = haproxy_conf(tmp, ha_port, up_port)
        if not args.only_mtls:
            ha = start(["haproxy", "-f", ha_conf])
            procs.append(ha)
            wait_port(ha_port)
            targets.append(Target("haproxy", ha_port, ha, lambda p=ha: children(p.pid)))
            if args.with_churn:
                targets.append(Target("haproxy-churn", ha_port, ha, lambda p=ha: children(p.pid),
                                      headers=["Connection: close"]))

        ng_port = free_port()
        ng_conf = os.path.join(tmp, "nginx-proxy.conf")
        with open(ng_conf, "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {tmp}/ng.pid; error_log {tmp}/ng-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{up_port}; keepalive 128; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{ng_port} backlog=4096;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
        if not args.only_mtls:
            ng = start(["nginx", "-c", ng_conf, "-p", tmp])
            procs.append(ng)
            wait_port(ng_port)
            targets.append(Target("nginx", ng_port, ng, lambda p=ng: children(p.pid)))
            if args.with_churn:
                targets.append(Target("nginx-churn", ng_port, ng, lambda p=ng: children(p.pid),
                                      headers=["Connection: close"]))

        # The floor: a byte forwarder that parses nothing (test/bench/floor.cc, built with the
        # tests as build/test/floor), one client connection to one upstream connection.
        floor_bin = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "test", "floor")
        if not args.only_mtls and os.path.exists(floor_bin):
            fl_port = free_port()
            fl = start([floor_bin, str(fl_port), str(up_port)])
            procs.append(fl)
            wait_port(fl_port)
            targets.append(Target("floor", fl_port, fl, lambda p=fl: [p.pid]))
        elif not args.only_mtls:
            print(f"bench: no {floor_bin} (a build with tests on makes it): the floor is left out", file=sys.stderr)

        time.sleep(0.5)
        for t in targets:
            t.rss_idle = rss_kib(t.pids_fn())
        # Warm-up, then interleaved rounds.
        for t in targets:
            run_wrk(t.port, 2, args.connections, t.headers)
        for r in range(args.rounds):
            for t in targets:
                pids = t.pids_fn()
                # The proxy's CPU, without the upstream's: the upstream's own share is measured
                # in the direct run.
                c0 = cpu_seconds(pids)
                scraper = Scraper(t.scrape_port) if t.scrape_port else None
                tapper = Tapper(*t.tap) if t.tap else None
                res = run_wrk(t.port, args.duration, args.connections, t.headers)
                if scraper:
                    res["scrapes"] = scraper.stop()
                if tapper:
                    res["tapped_bytes"] = tapper.stop()
                c1 = cpu_seconds(pids)
                res["cpu_us_per_req"] = (c1 - c0) / res["requests"] * 1e6 if res["requests"] else float("nan")
                t.runs.append(res)
                print(f"round {r + 1} {t.name:14s} {res['rps']:10.0f} req/s  p50 {res['p50']:.3f} ms  "
                      f"p99 {res['p99']:.3f} ms  cpu {res['cpu_us_per_req']:.2f} us/req  "
                      f"non-2xx {res['errors']} {res['socket_errors']}", flush=True)
        for t in targets:
            t.rss_loaded = rss_kib(t.pids_fn())

        def med(t, key):
            return statistics.median(x[key] for x in t.runs)

        direct = targets[0]
        pf = next(t for t in targets if t.name in ("pilotfish", "pilotfish-mtls"))
        print()
        print(f"{time.strftime('%Y-%m-%d')}: wrk -t1 -c{args.connections} -d{args.duration}s, "
              f"{args.rounds} interleaved rounds, medians; proxy+upstream on CPU {PROXY_CPU}, wrk on CPU {WRK_CPU}")
        print()
        floor = next((t for t in targets if t.name == "floor"), None)
        print("| target | req/s | p50 ms | p99 ms | added p50 ms | proxy CPU us/req | RSS idle MiB | RSS after MiB | "
              "req/s vs pilotfish | CPU vs floor |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for t in targets:
            added = med(t, "p50") - med(direct, "p50") if t is not direct else 0.0
            cpu = med(t, "cpu_us_per_req")
            # The ratio of medians of per-round CPU: each round's targets ran minutes apart at most.
            vs_floor = (f"{statistics.median(a['cpu_us_per_req'] / b['cpu_us_per_req'] for a, b in zip(t.runs, floor.runs)):.2f}"
                        if floor and t is not direct and "churn" not in t.name else "-")
            print(f"| {t.name} | {med(t, 'rps'):.0f} | {med(t, 'p50'):.3f} | {med(t, 'p99'):.3f} | "
                  f"{added:.3f} | {cpu:.2f} | {t.rss_idle / 1024:.1f} | {t.rss_loaded / 1024:.1f} | "
                  f"{med(t, 'rps') / med(pf, 'rps'):.2f} | {vs_floor} |")
        churn = {t.name: t for t in targets if t.name.endswith("-churn")}
        if "pilotfish-churn" in churn:
            print()
            for other in ("haproxy-churn", "nginx-churn"):
                if other in churn:
                    ratio = statistics.median(a["cpu_us_per_req"] / b["cpu_us_per_req"]
                                              for a, b in zip(churn["pilotfish-churn"].runs, churn[other].runs))
                    print(f"churn: pilotfish CPU per request / {other.split('-')[0]}'s: {ratio:.2f} "
                          "(median of per-round ratios)")
        if args.with_latency:
            report_latency([t for t in targets if "churn" not in t.name and "+" not in t.name
                            and t.name in ("direct", "pilotfish", "haproxy", "nginx", "floor")], args)
        if mtls_info:
            report_mtls(mtls_info, args)
    finally:
        stop_all(procs, tmp)


if __name__ == "__main__":
    main()
