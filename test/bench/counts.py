#!/usr/bin/env python3
"""System calls and heap allocations per request (issue 18), counted exactly rather than timed:
the counts a shared or loaded machine does not blur.

  python3 test/bench/counts.py [--bin build/pilotfish] [--requests 20000]

Each proxy runs (one worker or thread) in front of an NGINX upstream. After a warm-up, h2load
sends --requests requests (HTTP/1.1, 10 clients), keep-alive and then a new connection per
request (churn):
- system calls: `strace -c -f` attached to the proxy for exactly the measured requests, per
  request, with the calls that make them up (pilotfish, HAProxy and the floor, test/bench/floor.cc);
- allocations: pilotfish under the counting library test/bench/count_alloc.c (built with the
  tests as build/test/libcount_alloc.so): malloc, calloc, realloc and aligned allocations per
  request in steady state (counted in a second pilotfish: the library's reporter thread makes
  system calls of its own, which must not be in the first one's).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port, haproxy_conf, plain_pilotfish_policy, stop_all, upstream_conf, wait_port  # noqa: E402
from instructions import h2load  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def strace_counts(pid, port, requests, churn):
    """(system calls per request, [(calls per request, name)] largest first) for `requests`."""
    h2load(port, max(1000, requests // 10), churn)  # warm-up
    fd, out = tempfile.mkstemp(prefix="pf-strace-")
    os.close(fd)
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pid)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # attached to every thread
    done = h2load(port, requests, churn)
    tracer.send_signal(signal.SIGINT)
    _, err = tracer.communicate(timeout=60)
    calls = []
    with open(out) as f:
        text = f.read()
    if not re.search(r"^\s*100\.00\s.*\btotal\s*$", text, re.M):
        raise SystemExit("strace -c -p %d gave no summary:\n%s%s" % (pid, err, text))
    for line in text.splitlines():
        # % time  seconds  usecs/call  calls  [errors]  syscall
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)\s*$", line)
        if m and m.group(2) != "total":
            calls.append((int(m.group(1)) / done, m.group(2)))
    os.unlink(out)
    calls.sort(reverse=True)
    return sum(c for c, _ in calls), calls


def allocations(alloc_file):
    with open(alloc_file) as f:
        return int(f.read().split()[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "pilotfish"))
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    for tool in ("strace", "h2load", "nginx", "haproxy"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            raise SystemExit(tool + " is missing: scripts/install-deps.sh bench")
    build_test = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "test")
    floor_bin = os.path.join(build_test, "floor")
    shim = os.path.join(build_test, "libcount_alloc.so")
    for f in (floor_bin, shim):
        if not os.path.exists(f):
            raise SystemExit(f + " is missing: build with tests on (meson setup build)")
    tmp = tempfile.mkdtemp(prefix="pf-counts-")
    procs = []

    def start(cmd, env=None):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        procs.append(p)
        return p

    try:
        up_port = free_port()
        conf = upstream_conf(tmp, up_port)
        start(["nginx", "-c", conf, "-p", tmp])
        wait_port(up_port)

        rows = {}
        pf_port, ha_port, fl_port = free_port(), free_port(), free_port()
        alloc_file = os.path.join(tmp, "allocations")
        env = dict(os.environ, LD_PRELOAD=shim, COUNT_ALLOC_FILE=alloc_file)
        pf = start([args.bin, "run", "--config", plain_pilotfish_policy(tmp, "pilotfish", pf_port, free_port(), up_port)])
        pf_alloc_port = free_port()
        start([args.bin, "run", "--config", plain_pilotfish_policy(tmp, "counted", pf_alloc_port, free_port(), up_port)], env=env)
        ha = start(["haproxy", "-f", haproxy_conf(tmp, ha_port, up_port)])
        fl = start([floor_bin, str(fl_port), str(up_port)])
        for port in (pf_port, pf_alloc_port, ha_port, fl_port):
            wait_port(port)
        for mode in ("keep-alive", "churn"):
            churn = mode == "churn"
            h2load(pf_alloc_port, max(1000, args.requests // 10), churn)
            time.sleep(0.3)
            before = allocations(alloc_file)
            done = h2load(pf_alloc_port, args.requests, churn)
            time.sleep(0.3)
            rows[("pilotfish", mode, "allocations")] = (allocations(alloc_file) - before) / done
            for name, proc, port in (("pilotfish", pf, pf_port), ("haproxy", ha, ha_port), ("floor", fl, fl_port)):
                rows[(name, mode, "syscalls")] = strace_counts(proc.pid, port, args.requests, churn)
    finally:
        stop_all(procs, tmp)

    print("%s: per request, %d requests, 10 clients (h2load --h1), one worker or thread"
          % (time.strftime("%Y-%m-%d"), args.requests))
    print()
    print("| proxy | mode | system calls | of which | heap allocations |")
    print("|---|---|---|---|---|")
    for name in ("pilotfish", "haproxy", "floor"):
        for mode in ("keep-alive", "churn"):
            total, calls = rows[(name, mode, "syscalls")]
            parts = ", ".join("%s %.2f" % (n, c) for c, n in calls if c >= 0.05)
            alloc = rows.get((name, mode, "allocations"))
            print("| %s | %s | %.2f | %s | %s |" % (name, mode, total, parts, "%.2f" % alloc if alloc is not None else "-"))


if __name__ == "__main__":
    sys.exit(main())
