#!/usr/bin/env python3
"""The zones check of issue 23 with the release binaries, end to end on loopback.

Two `volley serve --capacity 4 --forward udp://` servers, A and B, each in front of its own
backend that takes 200 ms per request on 4 workers. B sits behind a relay that delays every
datagram by 20 ms each way (another zone). A is kept busy by 24 closed-loop flows through a
proxy over A alone (its queue: about 1.1 s). Then new flows, one at a time, go through a proxy
over the pool [A, B] and the time to each reply is measured, with the policy given:

    python3 volley-lab/scripts/zones_e2e.py --policy earliest   # the claim's default
    python3 volley-lab/scripts/zones_e2e.py --policy path       # path-aware (PROTOCOL.md §6.2.4)

Build first: cargo build --release -p volley-cli. Everything binds 127.0.0.1 and is torn down
at the end; every loop is bounded in count and time.
"""

import argparse
import heapq
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

VOLLEY = os.path.join(os.path.dirname(__file__), "..", "..", "target", "release", "volley")


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def backend(port, name, stop):
    """A UDP service of 4 workers, 200 ms per request, FIFO: replies `name:payload`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.2)
    pool = ThreadPoolExecutor(max_workers=4)

    def work(data, addr):
        time.sleep(0.2)
        sock.sendto(name.encode() + b":" + data, addr)

    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        pool.submit(work, data, addr)
    pool.shutdown(wait=False, cancel_futures=True)


def relay(listen_port, target, delay, stop):
    """Forwards datagrams to `target` and back, each after `delay` seconds, one upstream socket
    per client source (so replies find their client)."""
    down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    down.bind(("127.0.0.1", listen_port))
    ups = {}  # client addr -> upstream socket
    owner = {}  # upstream fileno -> client addr
    due = []  # (time, seq, sock, data, addr)
    seq = 0
    while not stop.is_set():
        timeout = 0.05
        if due:
            timeout = max(0.0, min(timeout, due[0][0] - time.monotonic()))
        socks = [down] + list(ups.values())
        ready, _, _ = select.select(socks, [], [], timeout)
        now = time.monotonic()
        for s in ready:
            data, addr = s.recvfrom(65535)
            if s is down:
                up = ups.get(addr)
                if up is None:
                    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    up.bind(("127.0.0.1", 0))
                    ups[addr] = up
                    owner[up.fileno()] = addr
                heapq.heappush(due, (now + delay, seq, up, data, target))
            else:
                heapq.heappush(due, (now + delay, seq, down, data, owner[s.fileno()]))
            seq += 1
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, s, data, addr = heapq.heappop(due)
            s.sendto(data, addr)


def wait_ready(path, proc, what):
    for _ in range(200):
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        if proc.poll() is not None:
            sys.exit(f"{what} exited early")
        time.sleep(0.05)
    sys.exit(f"{what} not ready")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="path", choices=["earliest", "window", "path"])
    ap.add_argument("--flows", type=int, default=10, help="new flows measured, one at a time")
    ap.add_argument("--busy", type=int, default=24, help="closed-loop flows keeping A busy")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="zones-e2e-")
    procs = []
    stop = threading.Event()
    threads = []

    def start(argv, name):
        ready = os.path.join(tmp, name + ".json")
        p = subprocess.Popen(argv + ["--ready-file", ready], stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(tmp, name + ".log"), "w"))
        procs.append(p)
        return wait_ready(ready, p, name)

    try:
        key = os.path.join(tmp, "server.key")
        subprocess.run([VOLLEY, "keygen", "--out", key, "--force"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pub = subprocess.run([VOLLEY, "pubkey", key], check=True, capture_output=True,
                             text=True).stdout.strip()
        servers = {}
        for name in ["A", "B"]:
            bport = free_port()
            t = threading.Thread(target=backend, args=(bport, name, stop), daemon=True)
            t.start()
            threads.append(t)
            r = start([VOLLEY, "serve", "--listen", "127.0.0.1:0", "--key", key, "--capacity", "4",
                       "--forward", f"udp://127.0.0.1:{bport}"], "serve-" + name)
            servers[name] = r["udp"]
        rport = free_port()
        host, port = servers["B"].rsplit(":", 1)
        t = threading.Thread(target=relay, args=(rport, (host, int(port)), 0.020, stop),
                             daemon=True)
        t.start()
        threads.append(t)
        b_far = f"127.0.0.1:{rport}"
        busy = start([VOLLEY, "proxy", "--listen", "udp://127.0.0.1:0", "--server-key", pub,
                      servers["A"]], "proxy-busy")
        pool = start([VOLLEY, "proxy", "--listen", "udp://127.0.0.1:0", "--server-key", pub,
                      "--policy", args.policy, servers["A"], b_far], "proxy-pool")

        def addr(s):
            h, p = s.split("://")[-1].rsplit(":", 1)
            return (h, int(p))

        # A kept busy: closed-loop flows through the proxy over A alone (bounded in time).
        load_until = time.monotonic() + 60

        def loop(i):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.settimeout(5)
            while not stop.is_set() and time.monotonic() < load_until:
                c.sendto(b"busy%d" % i, addr(busy["listen"]))
                try:
                    c.recv(100)
                except socket.timeout:
                    pass

        for i in range(args.busy):
            t = threading.Thread(target=loop, args=(i,), daemon=True)
            t.start()
            threads.append(t)
        time.sleep(3)  # A's queue builds up, its service-time estimate settles
        results = []
        for i in range(args.flows):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.settimeout(5)
            t0 = time.monotonic()
            c.sendto(b"new%d" % i, addr(pool["listen"]))
            try:
                reply = c.recv(100)
                ms = (time.monotonic() - t0) * 1e3
                results.append((ms, reply.split(b":")[0].decode()))
            except socket.timeout:
                results.append((None, "timeout"))
            c.close()
            time.sleep(0.3)
        for ms, who in results:
            print(f"{args.policy}: reply after {ms:.0f} ms from {who}" if ms else
                  f"{args.policy}: no reply within 5 s")
        got = sorted(ms for ms, _ in results if ms is not None)
        if got:
            print(f"{args.policy}: {len(got)}/{len(results)} replied; min {got[0]:.0f} ms, "
                  f"median {got[len(got) // 2]:.0f} ms, max {got[-1]:.0f} ms; from B: "
                  f"{sum(1 for _, w in results if w == 'B')}")
    finally:
        stop.set()
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
