#!/usr/bin/env python3
"""HTTP/2 and gRPC: h2load (nghttp2-client) against pilotfish, HAProxy 2.6 and NGINX 1.22, each
with one worker on the proxy CPU (h2load on the other). Three scenarios, each proxy one process
with a listener per scenario:

  front  h2c (prior knowledge) from the client, HTTP/1.1 to an NGINX upstream; small requests,
         a few connections with 100 streams each.
  both   h2c on both sides: the upstream is NGINX speaking h2c. NGINX as a proxy cannot speak
         HTTP/2 to an upstream (but for gRPC), so it has no row here.
  grpc   gRPC unary calls (POST, application/grpc, one 5-byte message each way, the status in
         trailers) at a fixed concurrency (10 connections x 10 streams), h2c on both sides; NGINX
         with grpc_pass. The upstream is NGINX answering every call with a fixed message and
         grpc-status 0 in trailers, so that it costs little and the proxies are what differs.

Rounds are interleaved; each round sends the same number of requests through each proxy and
reads the proxy's CPU time from /proc. Reports medians: CPU microseconds per request, requests
per second, p50 and p99 of the request times (from h2load's per-request log), and the proxy's
RSS per idle HTTP/2 connection (500 connections that sent the preface and SETTINGS, then
nothing), measured before any load.

    python3 test/bench/bench_h2.py [--rounds 5] [--requests 100000] [--scenarios front,both,grpc]
                                   [--upstream-beside-client]

The NGINX upstream shares the proxy's CPU unless --upstream-beside-client puts it on h2load's.

Timings on a shared machine are noisy: compare the columns of one run, not runs.
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (free_port, wait_port, cpu_seconds, rss_kib, children, start, write, HAPROXY_HEAD)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRPC_PATH = "/grpc.Bench/Unary"
GRPC_MESSAGE = b"\x00\x00\x00\x00\x05hello"  # uncompressed, 5 bytes: the gRPC length prefix then the message

SCENARIOS = {
    # name: (h2load connections, streams per connection, path, gRPC)
    "front": (10, 100, "/", False),
    "both": (10, 100, "/", False),
    "grpc": (10, 10, GRPC_PATH, True),
}


def run_h2load(port, requests, clients, streams, path, grpc, tmp):
    # Not in the folder of pilotfish's policy: that folder is watched, and a file written there on
    # every request is a cost no production sidecar sees.
    os.makedirs(os.path.join(tmp, "h2load"), exist_ok=True)
    log = os.path.join(tmp, "h2load", "requests.log")
    if os.path.exists(log):
        os.unlink(log)  # h2load appends
    cmd = ["taskset", "-c", bench.WRK_CPU, "h2load", "-t", "1", "-n", str(requests), "-c", str(clients),
           "-m", str(streams), "--log-file", log]
    if grpc:
        cmd += ["-d", os.path.join(tmp, "grpc-request.bin"), "-H", "content-type: application/grpc",
                "-H", "te: trailers"]
    out = subprocess.run(cmd + ["http://127.0.0.1:%d%s" % (port, path)], capture_output=True, text=True,
                         timeout=300).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if not done or int(done.group(1)) != requests:
        raise RuntimeError("h2load did not complete every request on port %d:\n%s" % (port, out))
    failed = requests - int(done.group(2))  # not 2xx: reported, not hidden
    # Per request: start (us since the epoch), status, microseconds until the response's end.
    times = sorted(int(line.split("\t")[2]) for line in open(log) if line.strip())
    p50 = times[len(times) // 2] / 1000.0
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] / 1000.0
    return float(rps.group(1)), p50, p99, failed


def idle_rss_per_connection(port, pids, count=500):
    """RSS growth (KiB) per idle HTTP/2 connection: `count` connections that sent the preface and
    a SETTINGS frame, then nothing."""
    base = bench.rss_kib(pids)
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            socks.append(s)
        time.sleep(1.0)
        return (bench.rss_kib(pids) - base) / count
    finally:
        for s in socks:
            s.close()


def start_upstreams(tmp, procs, cpu):
    """NGINX twice: HTTP/1.1 (the `front` scenario's upstream) and h2c, which answers gRPC calls
    to GRPC_PATH with GRPC_MESSAGE and grpc-status 0 in trailers (a POST to a static file is
    turned into a GET by error_page) and anything else with a small body."""
    h1, h2 = bench.free_port(), bench.free_port()
    os.chmod(tmp, 0o755)  # NGINX's worker (not root) reads the reply from here
    bench.write(os.path.join(tmp, "grpc-reply.bin"), GRPC_MESSAGE, binary=True)
    os.chmod(os.path.join(tmp, "grpc-reply.bin"), 0o644)
    bench.write(os.path.join(tmp, "grpc-request.bin"), GRPC_MESSAGE, binary=True)
    bench.write(os.path.join(tmp, "upstream.conf"), f"""worker_processes 1; daemon off; pid {tmp}/up.pid;
error_log {tmp}/up-error.log; events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; http2_max_requests 1000000; http2_max_concurrent_streams 1000;
  server {{ listen 127.0.0.1:{h1} backlog=4096; location / {{ return 200 "hello from upstream\\n"; }} }}
  server {{ listen 127.0.0.1:{h2} http2 backlog=4096;
    location = {GRPC_PATH} {{ default_type application/grpc; add_trailer grpc-status 0;
      error_page 405 =200 $uri; alias {tmp}/grpc-reply.bin; }}
    location / {{ return 200 "hello from upstream\\n"; }} }} }}
""")
    up = subprocess.Popen(["taskset", "-c", cpu, "nginx", "-c", os.path.join(tmp, "upstream.conf"), "-p", tmp],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(up)
    bench.wait_port(h1)
    bench.wait_port(h2)
    return h1, h2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--scenarios", default="front,both,grpc")
    # The upstream shares the proxy's core by default (the proxy and what it serves compete, as
    # in a pod on one CPU); with this it runs beside h2load instead, and the proxy has its core.
    ap.add_argument("--upstream-beside-client", action="store_true")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "pilotfish"))
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit("bench_h2: unknown scenario %s (front, both, grpc)" % s)
    for tool in ("h2load", "haproxy", "nginx"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            sys.exit("bench_h2: %s is missing: run scripts/install-deps.sh bench" % tool)

    tmp = tempfile.mkdtemp(prefix="pf-bench-h2-")
    procs = []
    try:
        up_h1, up_h2 = start_upstreams(tmp, procs, bench.WRK_CPU if args.upstream_beside_client else bench.PROXY_CPU)
        # Per scenario, the port of each proxy's listener for it.
        ports = {s: {} for s in scenarios}

        pf_admin = bench.free_port()
        listeners, clusters = [], []
        for s in scenarios:
            port = ports[s]["pilotfish"] = bench.free_port()
            listeners.append(f"  - {{name: {s}, address: 127.0.0.1:{port}, routes: [{{cluster: {s}}}]}}")
            if s == "front":
                clusters.append(f"  - {{name: {s}, endpoints: [127.0.0.1:{up_h1}]}}")
            else:
                clusters.append(f"  - {{name: {s}, protocol: http2, endpoints: [127.0.0.1:{up_h2}]}}")
        bench.write(os.path.join(tmp, "pf.yaml"), "version: 1\nservice: bench\nworkers: 1\naccess_log: off\n"
                    f"admin: {{address: 127.0.0.1:{pf_admin}}}\nlisteners:\n" + "\n".join(listeners) +
                    "\nclusters:\n" + "\n".join(clusters) + "\n")
        pf = bench.start([args.bin, "run", "--config", os.path.join(tmp, "pf.yaml")])
        procs.append(pf)

        ha_conf = bench.HAPROXY_HEAD
        for s in scenarios:
            port = ports[s]["haproxy"] = bench.free_port()
            server = f"127.0.0.1:{up_h1}" if s == "front" else f"127.0.0.1:{up_h2} proto h2"
            ha_conf += f"frontend fe_{s}\n  bind 127.0.0.1:{port} proto h2\n  default_backend be_{s}\n"
            ha_conf += f"backend be_{s}\n  server up {server}\n"
        bench.write(os.path.join(tmp, "haproxy.cfg"), ha_conf)
        ha = bench.start(["haproxy", "-f", os.path.join(tmp, "haproxy.cfg")])
        procs.append(ha)

        ng_servers = ""
        for s in scenarios:
            if s == "both":
                continue  # NGINX proxies HTTP/2 to an upstream only for gRPC
            port = ports[s]["nginx"] = bench.free_port()
            if s == "front":
                location = 'proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
            else:
                location = "grpc_pass grpc://grpc_up;"
            ng_servers += f"""  server {{ listen 127.0.0.1:{port} http2 backlog=4096; http2_max_concurrent_streams 128;
    location / {{ {location} }} }}
"""
        bench.write(os.path.join(tmp, "nginx-proxy.conf"), f"""worker_processes 1; daemon off; pid {tmp}/ng.pid;
error_log {tmp}/ng-error.log; events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; http2_max_requests 1000000;
  upstream up {{ server 127.0.0.1:{up_h1}; keepalive 128; keepalive_requests 1000000; }}
  upstream grpc_up {{ server 127.0.0.1:{up_h2}; keepalive 128; keepalive_requests 1000000; }}
{ng_servers}}}
""")
        ng = bench.start(["nginx", "-c", os.path.join(tmp, "nginx-proxy.conf"), "-p", tmp])
        procs.append(ng)

        pids = {"pilotfish": lambda: [pf.pid], "haproxy": lambda: bench.children(ha.pid),
                "nginx": lambda: bench.children(ng.pid)}
        for s in scenarios:
            for port in ports[s].values():
                bench.wait_port(port)

        # Before any load: a proxy's buffer pools, once filled by load, would hide what an idle
        # connection costs.
        first = scenarios[0]
        idle = {name: idle_rss_per_connection(port, pids[name]()) for name, port in ports[first].items()}

        results = {(s, name): [] for s in scenarios for name in ports[s]}
        for s in scenarios:  # warm-up: pools, caches
            clients, streams, path, grpc = SCENARIOS[s]
            for name, port in ports[s].items():
                run_h2load(port, 10000, clients, streams, path, grpc, tmp)
        for r in range(args.rounds):
            for s in scenarios:
                clients, streams, path, grpc = SCENARIOS[s]
                for name, port in ports[s].items():
                    before = bench.cpu_seconds(pids[name]())
                    rps, p50, p99, failed = run_h2load(port, args.requests, clients, streams, path, grpc, tmp)
                    cpu = bench.cpu_seconds(pids[name]()) - before
                    results[(s, name)].append((cpu / args.requests * 1e6, rps, p50, p99, failed))
            print("round %d done" % (r + 1), file=sys.stderr)
        print("%s: h2load, %d requests per run, %d interleaved rounds, medians; one worker each on CPU %s, "
              "h2load on CPU %s, the NGINX upstream on CPU %s" % (
                  time.strftime("%Y-%m-%d"), args.requests, args.rounds, bench.PROXY_CPU, bench.WRK_CPU,
                  bench.WRK_CPU if args.upstream_beside_client else bench.PROXY_CPU))
        print()
        print("| scenario | proxy | CPU us/request | vs HAProxy | requests/s | p50 ms | p99 ms | not 2xx (all rounds) |")
        print("|---|---|---|---|---|---|---|---|")
        for s in scenarios:
            clients, streams, _, _ = SCENARIOS[s]
            ha_cpu = statistics.median(x[0] for x in results[(s, "haproxy")])
            for name in ports[s]:
                runs = results[(s, name)]
                cpu = statistics.median(x[0] for x in runs)
                print("| %s (-c %d -m %d) | %s | %.2f | %.2fx | %.0f | %.2f | %.2f | %d |" % (
                    s, clients, streams, name, cpu, cpu / ha_cpu, statistics.median(x[1] for x in runs),
                    statistics.median(x[2] for x in runs), statistics.median(x[3] for x in runs),
                    sum(x[4] for x in runs)))
        print()
        print("RSS per idle HTTP/2 connection (500 connections before any load, on the %s listeners): %s" % (
            first, ", ".join("%s %.1f KiB" % (name, kib) for name, kib in idle.items())))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
