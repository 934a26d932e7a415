#!/usr/bin/env python3
"""serve-client: HTTP clients for tests/proof-serve.sh, against http-hello.

  serve-client.py slowloris PORT N PROBES
      N connections each trickle a request head, one byte a second (never
      finishing it), while a normal client sends PROBES keep-alive requests,
      one every 10 ms, and times each.  Every slow connection is watched
      until the server closes it.  Prints "key value" lines: slow_closed,
      slow_eof, slow_reset, slow_answered, slow_first_close_s and
      slow_last_close_s (from each one's first byte), probe_answered,
      probe_failed, probe_p50_ms, probe_p99_ms, probe_max_ms.

  serve-client.py burst PORT N [HOLD]
      N connections at once, each one request with "Connection: close",
      read to the end; the requests are sent HOLD seconds (default 0) after
      the connections were made, so that a server short of fds stays at its
      limit that long.  Prints answered, failed and elapsed_s.

Every wait is bounded (the caller bounds the whole run too).
"""
import selectors
import socket
import sys
import threading
import time

HEAD = b"GET / HTTP/1.1\r\nHost: slowloris\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
REQ = b"GET / HTTP/1.1\r\nHost: probe\r\n\r\n"
CLOSE_REQ = b"GET / HTTP/1.1\r\nHost: burst\r\nConnection: close\r\n\r\n"


def read_response(s, buf):
    """One response (head and Content-Length body) from s; returns (head, rest)."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise EOFError("EOF inside a response head")
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v)
    while len(rest) < n:
        d = s.recv(4096)
        if not d:
            raise EOFError("EOF inside a response body")
        rest += d
    return head, rest[n:]


def probe(port, count, out):
    """count keep-alive requests, one every 10 ms; latencies in ms into out."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            s.sendall(REQ)
            head, buf = read_response(s, buf)
        except (OSError, EOFError):
            out["failed"] += 1
            s.close()
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            buf = b""
            continue
        if head.startswith(b"HTTP/1.1 200 "):
            out["lat"].append((time.perf_counter() - t0) * 1000)
        else:
            out["failed"] += 1
        time.sleep(0.01)
    s.close()


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def slowloris(port, n, probes):
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        c = {"s": s, "sent": 0, "first": None, "closed": None, "how": None}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    res = {"lat": [], "failed": 0}
    t = threading.Thread(target=probe, args=(port, probes, res))
    start = time.monotonic()
    # One byte a second each, phases spread so that the sends are even.
    due = [start + i / n for i in range(n)]
    t.start()
    open_ = n
    deadline = start + 120
    while open_ and time.monotonic() < deadline:
        now = time.monotonic()
        for i, c in enumerate(conns):
            if c["closed"] is None and due[i] <= now and c["sent"] < len(HEAD):
                try:
                    c["s"].send(HEAD[c["sent"]:c["sent"] + 1])
                except OSError:
                    pass  # the close shows up as readable below
                else:
                    if c["first"] is None:
                        c["first"] = now
                    c["sent"] += 1
                due[i] += 1.0
        for key, _ in sel.select(timeout=0.002):
            c = key.data
            try:
                d = c["s"].recv(4096)
                how = "answered" if d else "eof"
            except ConnectionResetError:
                how = "reset"
            except BlockingIOError:
                continue
            c["closed"], c["how"] = time.monotonic(), how
            sel.unregister(c["s"])
            c["s"].close()
            open_ -= 1
    t.join()
    closed = [c for c in conns if c["closed"] is not None]
    spans = [c["closed"] - c["first"] for c in closed if c["first"] is not None]
    print("slow_closed", len(closed))
    for how in ("eof", "reset", "answered"):
        print("slow_" + how, sum(1 for c in closed if c["how"] == how))
    print("slow_first_close_s %.3f" % (min(spans) if spans else -1))
    print("slow_last_close_s %.3f" % (max(spans) if spans else -1))
    print("probe_answered", len(res["lat"]))
    print("probe_failed", res["failed"])
    print("probe_p50_ms %.3f" % percentile(res["lat"], 0.50))
    print("probe_p99_ms %.3f" % percentile(res["lat"], 0.99))
    print("probe_max_ms %.3f" % (max(res["lat"]) if res["lat"] else float("nan")))


def burst(port, n, hold):
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    answered = failed = 0
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE, {"buf": b"", "sent": False})
    # The kernel completes the handshakes meanwhile (the server's accept
    # queue holds what its worker cannot take).
    time.sleep(hold)
    left = n
    while left and time.monotonic() < start + 60:
        for key, ev in sel.select(timeout=1):
            s, st = key.fileobj, key.data
            done = ok = False
            try:
                if not st["sent"]:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect")
                    s.send(CLOSE_REQ)
                    st["sent"] = True
                    sel.modify(s, selectors.EVENT_READ, st)
                    continue
                d = s.recv(4096)
                if d:
                    st["buf"] += d
                    continue
                done, ok = True, st["buf"].startswith(b"HTTP/1.1 200 ") and st["buf"].endswith(b"hello\n")
            except OSError:
                done = True
            if done:
                answered += ok
                failed += not ok
                sel.unregister(s)
                s.close()
                left -= 1
    print("answered", answered)
    print("failed", failed + left)
    print("elapsed_s %.3f" % (time.monotonic() - start))


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "slowloris":
        slowloris(port, int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "burst":
        burst(port, int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
    else:
        sys.exit("serve-client.py: unknown mode '%s' (slowloris or burst)" % mode)
