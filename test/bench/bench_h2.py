#!/usr/bin/env python3
"""HTTP/2 in front: h2load (nghttp2-client) against pilotfish, HAProxy 2.6 and NGINX 1.22, each with
one worker on one core (h2load on the other), each speaking h2c (prior knowledge) to the client and HTTP/1.1 to the same NGINX
upstream (a small fixed body). Rounds are interleaved; each round sends the same number of
requests over a few connections with many streams each, and reads each proxy's CPU time from
/proc. Reports medians: CPU microseconds per request, requests per second, p99 of h2load's
request times, and the proxy's RSS with its client connections open and idle.

    python3 test/bench/bench_h2.py [--rounds 5] [--requests 200000] [--clients 10] [--streams 100]

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
import bench  # noqa: E402  (free_port, wait_port, cpu_seconds, rss_kib, children, start)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_h2load(port, requests, clients, streams):
    out = subprocess.run(["taskset", "-c", bench.WRK_CPU, "h2load", "-t", "1", "-n", str(requests), "-c", str(clients), "-m", str(streams),
                          "http://127.0.0.1:%d/" % port], capture_output=True, text=True, timeout=300).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    # "time for request:   min   max   mean   sd   +/- sd"; no percentiles: the max and mean.
    tfr = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    if not done or int(done.group(2)) != requests:
        raise RuntimeError("h2load did not complete every request:\n" + out)
    unit = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
    mean_ms = float(tfr.group(5)) * unit[tfr.group(6)] if tfr else float("nan")
    return float(rps.group(1)), mean_ms


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "pilotfish"))
    args = ap.parse_args()
    for tool in ("h2load", "haproxy", "nginx"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            sys.exit("bench_h2: %s is missing: run scripts/install-deps.sh bench" % tool)

    tmp = tempfile.mkdtemp(prefix="pf-bench-h2-")
    procs = []
    try:
        up_port = bench.free_port()
        bench.write(os.path.join(tmp, "upstream.conf"), f"""worker_processes 1; daemon off; pid {tmp}/up.pid;
error_log {tmp}/up-error.log; events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{up_port} backlog=4096; location / {{ return 200 "hello from upstream\\n"; }} }} }}
""")
        up = bench.start(["nginx", "-c", os.path.join(tmp, "upstream.conf"), "-p", tmp])
        procs.append(up)
        bench.wait_port(up_port)

        targets = []  # (name, port, pids function)
        pf_port, pf_admin = bench.free_port(), bench.free_port()
        bench.write(os.path.join(tmp, "pf.yaml"), f"""version: 1
service: bench
workers: 1
access_log: off
admin: {{address: 127.0.0.1:{pf_admin}}}
listeners:
  - {{name: ingress, address: 127.0.0.1:{pf_port}, routes: [{{cluster: upstream}}]}}
clusters:
  - {{name: upstream, endpoints: [127.0.0.1:{up_port}]}}
""")
        pf = bench.start([args.bin, "run", "--config", os.path.join(tmp, "pf.yaml")])
        procs.append(pf)
        bench.wait_port(pf_port)
        targets.append(("pilotfish", pf_port, lambda p=pf: [p.pid]))

        ha_port = bench.free_port()
        bench.write(os.path.join(tmp, "haproxy.cfg"), f"""global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:{ha_port} proto h2
  default_backend be
backend be
  server up 127.0.0.1:{up_port}
""")
        ha = bench.start(["haproxy", "-f", os.path.join(tmp, "haproxy.cfg")])
        procs.append(ha)
        bench.wait_port(ha_port)
        targets.append(("haproxy", ha_port, lambda p=ha: bench.children(p.pid)))

        ng_port = bench.free_port()
        bench.write(os.path.join(tmp, "nginx-proxy.conf"), f"""worker_processes 1; daemon off; pid {tmp}/ng.pid;
error_log {tmp}/ng-error.log; events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; http2_max_requests 1000000;
  upstream up {{ server 127.0.0.1:{up_port}; keepalive 128; keepalive_requests 1000000; }}
  server {{ listen 127.0.0.1:{ng_port} http2 backlog=4096; http2_max_concurrent_streams 128;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
        ng = bench.start(["nginx", "-c", os.path.join(tmp, "nginx-proxy.conf"), "-p", tmp])
        procs.append(ng)
        bench.wait_port(ng_port)
        targets.append(("nginx", ng_port, lambda p=ng: bench.children(p.pid)))

        results = {name: [] for name, _, _ in targets}
        for name, port, _ in targets:  # warm-up: pools, caches
            run_h2load(port, 10000, args.clients, args.streams)
        for r in range(args.rounds):
            for name, port, pids in targets:
                before = bench.cpu_seconds(pids())
                rps, mean_ms = run_h2load(port, args.requests, args.clients, args.streams)
                cpu = bench.cpu_seconds(pids()) - before
                results[name].append((cpu / args.requests * 1e6, rps, mean_ms))
            print("round %d done" % (r + 1), file=sys.stderr)
        idle = {name: idle_rss_per_connection(port, pids()) for name, port, pids in targets}

        print("%s: h2load -n %d -c %d -m %d, %d interleaved rounds, medians (one worker each; HTTP/1.1 to the "
              "upstream)" % (time.strftime("%Y-%m-%d"), args.requests, args.clients, args.streams, args.rounds))
        print("| proxy | CPU us/request | vs HAProxy | requests/s | mean request time | RSS per idle h2 connection |")
        print("|---|---|---|---|---|---|")
        ha_cpu = statistics.median(x[0] for x in results["haproxy"])
        for name, _, _ in targets:
            cpu = statistics.median(x[0] for x in results[name])
            rps = statistics.median(x[1] for x in results[name])
            mean = statistics.median(x[2] for x in results[name])
            print("| %s | %.2f | %.2fx | %.0f | %.2f ms | %.1f KiB |" % (name, cpu, cpu / ha_cpu, rps, mean, idle[name]))
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
