#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""idle-client.py PORT WORKER-PID N: the client side of bench-idle.

Opens N keep-alive HTTP connections to 127.0.0.1:PORT, one request each, and
holds them idle.  Prints the worker's private memory per held connection (the
growth of Private_Clean + Private_Dirty in /proc/PID/smaps_rollup, measured
after 50 warm connections so that first-use costs stay out of it), then the
latency of 2000 requests on one more connection while the N are held (p50,
p99), then checks that 100 of the held connections still answer."""
import socket
import sys
import time

REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def private_bytes(pid):
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, *rest = line.split()
            if key in ("Private_Clean:", "Private_Dirty:"):
                total += int(rest[0]) * 1024
    return total


def ask(s):
    s.sendall(REQ)
    data = s.recv(4096)
    if not data.startswith(b"HTTP/1.1 200"):
        sys.exit(f"idle-client: bad answer {data[:40]!r}")


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    warm = [connect(port) for _ in range(50)]
    for s in warm:
        ask(s)
    time.sleep(0.3)
    before = private_bytes(pid)
    held = []
    for _ in range(n):
        s = connect(port)
        s.sendall(REQ)
        held.append(s)
    for s in held:
        if not s.recv(4096).startswith(b"HTTP/1.1 200"):
            sys.exit("idle-client: a held connection got a bad answer")
    time.sleep(0.5)
    after = private_bytes(pid)
    probe = connect(port)
    lat = []
    for _ in range(2000):
        t0 = time.perf_counter()
        ask(probe)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    for s in held[:100]:
        ask(s)
    print(f"private_per_conn {(after - before) / n:.0f}")
    print(f"p50_ms {lat[len(lat) // 2] * 1e3:.3f}")
    print(f"p99_ms {lat[len(lat) * 99 // 100] * 1e3:.3f}")
    for s in held + warm + [probe]:
        s.close()


main()
