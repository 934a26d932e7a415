#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Clients for tests/proof-tls.sh, against tlsmod (one answer line per line):
#   plain PORT            speaks HTTP in plaintext to the TLS port; prints
#                         "eof" (closed cleanly), "reset" or "timeout"
#   truncated PORT N      N connections that send the first half of a real
#                         ClientHello and close; prints "done N"
#   garbage PORT N        N connections sending random bytes, N more that send
#                         garbage records after a real handshake; prints
#                         "done N" and how the server ended them
#   load PORT CA SECONDS THREADS
#                         THREADS clients that connect (verifying against CA),
#                         send three lines, read three answers and close, for
#                         SECONDS; prints "requests=R connections=C failures=F"
#                         and one "failure: ..." line for each of the first ten
import os
import socket
import ssl
import sys
import threading
import time


def client_hello():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def read_end(s, timeout=5.0):
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return "eof"
    except ConnectionResetError:
        return "reset"
    except ssl.SSLError as e:  # the server's alert: a clean end of a TLS connection
        return "alert-" + (e.reason or "unknown").lower()
    except socket.timeout:
        return "timeout"


def plain(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    print(read_end(s))


def truncated(port, n):
    hello = client_hello()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(hello[: len(hello) // 2])
        s.close()
    print("done", n)


def garbage(port, n):
    ends = {}
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        # Never a record header that asks for more bytes than follow (random
        # bytes can look like an SSLv2 ClientHello or a TLS header with a
        # long length, and the server then rightly waits for the rest until
        # its request timeout): type 0, version 0.0, then noise.
        junk = b"\x00\x00\x00" + os.urandom(297)
        if i % 2:
            junk = b"\x16\x03\x01\xff\xff" + junk  # a handshake record header, then noise
        s.sendall(junk)
        e = read_end(s)
        ends[e] = ends.get(e, 0) + 1
        s.close()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        t = ctx.wrap_socket(raw, server_hostname="localhost")
        t.sendall(b"hello\n")
        t.recv(4096)
        # An application-data record whose MAC cannot be right.
        os.write(t.fileno(), b"\x17\x03\x03\x00\x40" + os.urandom(64))
        e = read_end(t)
        ends["after-handshake-" + e] = ends.get("after-handshake-" + e, 0) + 1
        t.close()
    print("done", 2 * n, " ".join("%s=%d" % kv for kv in sorted(ends.items())))


def load(port, ca, seconds, threads):
    ctx = ssl.create_default_context(cafile=ca)
    end = time.monotonic() + seconds
    stats = {"requests": 0, "connections": 0, "failures": 0}
    failures = []
    lock = threading.Lock()

    def one():
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                    with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                        f = t.makefile("rb")
                        for i in range(3):
                            t.sendall(b"ping %d\n" % i)
                            line = f.readline()
                            if not line.startswith(b"pid="):
                                raise RuntimeError("answer %r" % line)
                            with lock:
                                stats["requests"] += 1
                with lock:
                    stats["connections"] += 1
            except Exception as e:  # every kind counts as a failed request
                with lock:
                    stats["failures"] += 1
                    if len(failures) < 10:
                        failures.append(repr(e))

    ts = [threading.Thread(target=one) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print("requests=%(requests)d connections=%(connections)d failures=%(failures)d" % stats)
    for f in failures:
        print("failure:", f)


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "plain":
        plain(port)
    elif mode == "truncated":
        truncated(port, int(sys.argv[3]))
    elif mode == "garbage":
        garbage(port, int(sys.argv[3]))
    elif mode == "load":
        load(port, sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("unknown mode " + mode)
