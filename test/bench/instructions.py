#!/usr/bin/env python3
"""Instructions per request, counted by valgrind (callgrind): a measure of pilotfish's CPU cost
per request that a loaded or shared machine does not blur, for comparing two builds (the wall-
clock benchmark, bench.py, needs a quiet machine for differences of a few per cent).

  python3 test/bench/instructions.py [--bin build/pilotfish] [--baseline-bin OTHER] [--requests 20000]
                                     [--keep DIR] [--tap QUERY ...]

--keep DIR leaves each run's callgrind dump in DIR (NAME-MODE.callgrind), to see where the
instructions go: callgrind_annotate DIR/pilotfish-keep-alive.callgrind.

Each binary runs under callgrind (1 worker) in front of an NGINX upstream; after a warm-up its
counters are zeroed, h2load sends --requests requests (HTTP/1.1, 10 clients), and the count is
read. Keep-alive (every client keeps its connection) and churn (a new connection per request).
--tap QUERY (repeatable) counts --bin's keep-alive again with GET /tap?QUERY open and read: the
workers' and the admin loop's instructions for it, per request."""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Tapper, free_port, plain_pilotfish_policy, upstream_conf, wait_port  # noqa: E402


def h2load(port, requests, churn):
    cmd = ["h2load", "--h1", "-n", str(requests), "-c", "10", "-m", "1"]
    if churn:
        cmd += ["-H", "connection: close"]
    out = subprocess.run(cmd + ["http://127.0.0.1:%d/" % port], capture_output=True, text=True, timeout=600).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not m or m.group(1) != m.group(2):
        raise SystemExit("h2load did not finish every request:\n" + out)
    return int(m.group(2))


def measure(binary, upstream_port, tmp, name, requests, keep=None, taps=()):
    """{mode: instructions per request}: keep-alive and churn, then keep-alive again with a tap
    open and read (GET /tap?QUERY) for each query in `taps` ("keep-alive, tap QUERY")."""
    port, admin = free_port(), free_port()
    policy = plain_pilotfish_policy(tmp, name, port, admin, upstream_port)
    out_file = os.path.join(tmp, name + ".callgrind")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out_file + ".%p",
                             binary, "run", "--config", policy], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60)  # valgrind starts slowly
        results = {}
        for mode in ["keep-alive", "churn"] + ["keep-alive, tap " + q for q in taps]:
            churn = mode == "churn"
            tapper = Tapper(admin, mode.split("tap ", 1)[1]) if "tap " in mode else None
            h2load(port, max(1000, requests // 10), churn)  # warm-up: pools, caches, allocator
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
            done = h2load(port, requests, churn)
            if tapper:
                time.sleep(0.5)  # the admin loop's last sends (every 100 ms) are counted too
            for old in glob.glob(out_file + ".*"):
                os.unlink(old)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
            total = 0
            for dump in glob.glob(out_file + ".*"):
                with open(dump) as f:
                    for line in f:
                        if line.startswith("summary:") or line.startswith("totals:"):
                            total = max(total, int(line.split()[1]))
                if keep:
                    shutil.copy(dump, os.path.join(keep, "%s-%s.callgrind" % (name, mode)))
            results[mode] = total / done
            if tapper:
                tapper.stop()
        return results
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "pilotfish"))
    ap.add_argument("--baseline-bin")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--keep", help="a directory for the callgrind dumps")
    ap.add_argument("--tap", action="append", default=[], metavar="QUERY",
                    help="also count --bin's keep-alive with a tap open and read (GET /tap?QUERY); repeatable")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(tool + " is missing: scripts/install-deps.sh bench")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="pf-instr-")
    up_port = free_port()
    conf = upstream_conf(tmp, up_port)
    up = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(up_port)
        rows = [("pilotfish", measure(args.bin, up_port, tmp, "pilotfish", args.requests, args.keep, args.tap))]
        if args.baseline_bin:
            rows.append(("baseline", measure(args.baseline_bin, up_port, tmp, "baseline", args.requests, args.keep)))
    finally:
        up.terminate()
        up.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    print("%s: instructions per request (callgrind, user space), %d requests, 10 clients"
          % (time.strftime("%Y-%m-%d"), args.requests))
    print("| build | keep-alive | churn |")
    print("|---|---|---|")
    for name, r in rows:
        line = "| %s | %.0f | %.0f |" % (name, r["keep-alive"], r["churn"])
        if len(rows) > 1 and name != "baseline":
            base = rows[1][1]
            line += " (%.3fx, %.3fx of baseline)" % (r["keep-alive"] / base["keep-alive"], r["churn"] / base["churn"])
        print(line)
    for mode, v in rows[0][1].items():
        if "tap" in mode:
            print("| pilotfish, %s open | %.0f (%.3fx of no tap) | |" % (mode.split(", ", 1)[1], v,
                                                                      v / rows[0][1]["keep-alive"]))


if __name__ == "__main__":
    sys.exit(main())
