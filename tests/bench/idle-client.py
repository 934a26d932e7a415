#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""idle-client.py PORT WORKER-PID N [SETTLE [SOURCES]]: the client side of
bench-idle.

Opens N keep-alive HTTP connections to 127.0.0.1:PORT, then sends one request
on each (all at once: the server's worst case), and holds them idle.  Prints the worker's private memory per held connection (the
growth of Private_Clean + Private_Dirty in /proc/PID/smaps_rollup, measured
after 50 warm connections so that first-use costs stay out of it, and SETTLE
seconds (default 0.5) after the last answer), the growth of its page tables
(VmPTE in /proc/PID/status, which Private does not count) per connection, then
the latency of 2000 requests on one more connection while the N are held (p50,
p99), then checks that 100 of the held connections still answer.

The connections come from SOURCES addresses (default 1) 127.0.0.2, 127.0.0.3,
... in turn, so that more of them than one address has ephemeral ports (the
ports of an earlier round sit in TIME_WAIT for a minute) can be opened."""
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


def page_table_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmPTE:"):
                return int(line.split()[1]) * 1024
    return 0


def ask(s):
    s.sendall(REQ)
    data = s.recv(4096)
    if not data.startswith(b"HTTP/1.1 200"):
        sys.exit(f"idle-client: bad answer {data[:40]!r}")


def connect(port, source=None):
    s = socket.create_connection(("127.0.0.1", port), source_address=source)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    settle = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5
    n_src = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    sources = [(f"127.0.0.{2 + i}", 0) for i in range(n_src)]
    warm = [connect(port) for _ in range(50)]
    for s in warm:
        ask(s)
    time.sleep(0.3)
    before = private_bytes(pid)
    pte_before = page_table_bytes(pid)
    held = []
    # Every request at once, after every connection is up: the server sees
    # them all readable together, its peak of live handlers (the worst case
    # for what it keeps afterwards) rather than one at a time.
    for i in range(n):
        held.append(connect(port, sources[i % n_src]))
    time.sleep(0.2)
    for s in held:
        s.sendall(REQ)
    for i, s in enumerate(held):
        data = s.recv(4096)
        if not data.startswith(b"HTTP/1.1 200"):
            sys.exit(f"idle-client: held connection {i} of {n} got {data[:40]!r}")
    time.sleep(settle)
    after = private_bytes(pid)
    pte_after = page_table_bytes(pid)
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
    print(f"pte_per_conn {(pte_after - pte_before) / n:.0f}")
    print(f"p50_ms {lat[len(lat) // 2] * 1e3:.3f}")
    print(f"p99_ms {lat[len(lat) * 99 // 100] * 1e3:.3f}")
    for s in held + warm + [probe]:
        s.close()


main()
