#!/usr/bin/env python3
"""Memory (issue 18): a proxy's resident memory when idle, and what each idle keep-alive client
connection adds to it, plain and mTLS, for pilotfish and HAProxy.

  python3 test/bench/idle.py [--bin build/pilotfish] [--connections 10000]

Each proxy runs (one worker or thread) in front of an NGINX upstream. Its RSS is read once it is
up (idle), with the part of it that is anonymous memory (most of an idle proxy's RSS is the code
pages of the libraries it maps, libcrypto's first); then --connections clients connect, each sends one keep-alive request, reads the
answer and stays connected, and the RSS is read again: (after - before) / connections is the
memory an idle keep-alive connection costs. The mTLS rows do the same with a TLS 1.3 client
presenting a SPIFFE certificate (the handshake, then the request). Kernel socket memory is not
in RSS and not counted, for either proxy. Not a test: it asserts nothing.
"""
import argparse
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import HAPROXY_HEAD, free_port, rss_kib, stop_all, upstream_conf, wait_port, write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TD = "spiffe://bench.local/ns/bench/sa/"


def hold(port, n, tls=None):
    """n keep-alive connections to `port`, each after one answered GET; returns the sockets."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            s = tls.wrap_socket(s, server_hostname="bench")
        s.sendall(request)
        got = b""
        while b"\r\n\r\n" not in got or not got.endswith(b"\n"):  # the upstream's body ends with \n
            piece = s.recv(4096)
            if not piece:
                raise SystemExit("idle: a connection to %d closed before its answer" % port)
            got += piece
        if not got.startswith(b"HTTP/1.1 200"):
            raise SystemExit("idle: %d answered %r" % (port, got[:60]))
        held.append(s)
    return held


def anonymous_kib(pids):
    """Memory the processes wrote themselves (heap, stacks, libraries' data), without the
    libraries' code pages that RSS also counts (shared with every process that maps them)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    total += int(line.split()[1])
    return total


def measure(name, proc, pids, port, n, tls=None):
    time.sleep(1.0)
    before = rss_kib(pids)
    anonymous = anonymous_kib(pids)
    held = hold(port, n, tls)
    time.sleep(2.5)  # pilotfish lets an idle connection's exchange go at its once-a-second sweep
    after = rss_kib(pids)
    alive = proc.poll() is None
    for s in held:
        s.close()
    if not alive:
        raise SystemExit("idle: %s exited while holding %d connections" % (name, n))
    return before, anonymous, after


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "pilotfish"))
    ap.add_argument("--connections", type=int, default=10000)
    args = ap.parse_args()
    n = args.connections
    # Room for n client sockets here and n accepted ones in each proxy (which inherit the limit).
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # pilotfish takes client connections up to half of its descriptors (the rest are for its
    # upstream connections): --connections needs a hard limit of a little over twice as many.
    if hard != resource.RLIM_INFINITY and hard < 2 * n + 1024:
        raise SystemExit("idle: the descriptor limit (%d) is too low for %d connections: pilotfish takes client "
                         "connections up to half of it; pass --connections %d or less" % (hard, n, (hard - 1024) // 2))
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    sys.path.insert(0, os.path.join(ROOT, "test", "integration"))
    import harness  # Pki: a CA and SPIFFE leaf certificates made with the openssl CLI

    tmp = tempfile.mkdtemp(prefix="pf-idle-")
    procs = []

    def start(cmd):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        pki = harness.Pki(os.path.join(tmp, "pki"))
        server_cert, server_key = pki.leaf("server", uris=[TD + "server"])
        client_cert, client_key = pki.leaf("client", uris=[TD + "client"])
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.minimum_version = ssl.TLSVersion.TLSv1_3
        tls.load_verify_locations(pki.cert)
        tls.load_cert_chain(client_cert, client_key)
        tls.check_hostname = False  # SPIFFE certificates name no host

        up_port = free_port()
        start(["nginx", "-c", upstream_conf(tmp, up_port), "-p", tmp])
        wait_port(up_port)

        rows = []
        for mtls in (False, True):
            port, admin = free_port(), free_port()
            listener = f"""
  - name: ingress
    address: 127.0.0.1:{port}
    routes: [{{cluster: app}}]"""
            identity = ""
            if mtls:
                listener += f"\n    mtls: true\n    allow: [{TD}client]"
                identity = f"identity: {{cert: {server_cert}, key: {server_key}, ca: {pki.cert}}}\n"
            policy = write(os.path.join(tmp, "pf-%d.yaml" % mtls), f"""version: 1
service: bench
workers: 1
access_log: "off"
admin: {{address: "127.0.0.1:{admin}"}}
{identity}listeners:{listener}
clusters:
  - name: app
    endpoints: ["127.0.0.1:{up_port}"]
""")
            p = start([args.bin, "run", "--config", policy])
            wait_port(port)
            rows.append(("pilotfish", "mTLS" if mtls else "plain") +
                        measure("pilotfish", p, [p.pid], port, n, tls if mtls else None))
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)

            # HAProxy, one thread, room for n connections (it wants two descriptors per maxconn).
            pem = write(os.path.join(tmp, "ha.pem"), open(server_cert).read() + open(server_key).read())
            port = free_port()
            bind = f"127.0.0.1:{port}" + (f" ssl crt {pem} ca-file {pki.cert} verify required" if mtls else "")
            conf = write(os.path.join(tmp, "ha-%d.cfg" % mtls),
                         HAPROXY_HEAD.replace("maxconn 4000", "maxconn %d" % (n + 100)) + f"""  option http-keep-alive
frontend fe
  bind {bind}
  default_backend be
backend be
  server up 127.0.0.1:{up_port}
""")
            h = start(["haproxy", "-f", conf])
            wait_port(port)
            rows.append(("haproxy", "mTLS" if mtls else "plain") +
                        measure("haproxy", h, [h.pid], port, n, tls if mtls else None))
            h.send_signal(signal.SIGTERM)
            h.wait(timeout=30)

        print()
        print(f"{time.strftime('%Y-%m-%d')}: RSS idle, and per idle keep-alive connection ({n} connections, "
              "each after one answered request; kernel socket memory not included)")
        print()
        print("| proxy | client connections | RSS idle MiB | of which anonymous MiB | RSS holding them MiB | "
              "per connection KiB |")
        print("|---|---|---|---|---|---|")
        for proxy, kind, before, anonymous, after in rows:
            print(f"| {proxy} | {kind} | {before / 1024:.1f} | {anonymous / 1024:.1f} | {after / 1024:.1f} | "
                  f"{(after - before) / n:.2f} |")
    finally:
        stop_all(procs, tmp)


if __name__ == "__main__":
    main()
