#!/usr/bin/env python3
"""proof-lines-client: keep-alive load for tests/versionmod.c (used by
tests/proof-reload.sh).  Each connection sends a line and waits for the answer
"VERSION pid=P gen=G", over and over; "VERSION bye" (the worker is stopping)
ends the connection gracefully and a new one is made.

  failed   a request that got no complete answer (EOF, reset, timeout), or
           a connection that could not be made: must stay 0 across reloads;
  answered answers, and per version how many ("version V N").

Usage: proof-lines-client.py PORT CONNECTIONS STOPFILE MAXSECONDS
Runs until STOPFILE exists (or MAXSECONDS), then prints "key value" lines and
the first errors as "# ..." lines.
"""
import asyncio
import os
import sys
import time

c = dict(sent=0, answered=0, failed=0, byes=0, connects=0)
versions = {}
errors = []


def fail(what):
    c["failed"] += 1
    if len(errors) < 5:
        errors.append(what)


async def one(port, stop, deadline):
    while not os.path.exists(stop) and time.monotonic() < deadline:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except (OSError, asyncio.TimeoutError) as e:
            fail("connect: %r" % e)
            await asyncio.sleep(0.05)
            continue
        c["connects"] += 1
        try:
            while not os.path.exists(stop) and time.monotonic() < deadline:
                w.write(b"v\n")
                c["sent"] += 1
                try:
                    line = await asyncio.wait_for(r.readline(), 5)
                except (OSError, asyncio.TimeoutError) as e:
                    fail("read: %r" % e)
                    break
                if not line.endswith(b"\n"):
                    fail("answer cut: %r" % line)
                    break
                c["answered"] += 1
                v = line.split()[0].decode()
                versions[v] = versions.get(v, 0) + 1
                if line.split()[1:2] == [b"bye"]:
                    c["byes"] += 1
                    break
        finally:
            w.close()


async def main():
    port, conns, stop, secs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    deadline = time.monotonic() + secs
    await asyncio.gather(*(one(port, stop, deadline) for _ in range(conns)))


asyncio.run(main())
for k, v in c.items():
    print(k, v)
for k in sorted(versions):
    print("version", k, versions[k])
for e in errors:
    print("#", e)
