#!/usr/bin/env python3
"""proof-client: a keep-alive HTTP/1.1 load client that tells apart the two
kinds of failure a graceful stop may cause (used by tests/proof-load.sh):

  lost      a request written on a connection that had already been
            answered once (so a worker surely accepted it) that got no
            complete response (EOF, reset or timeout): must never happen;
  lost_first  the first request on a fresh connection got no response: the
            connection was still in the kernel's accept queue when the last
            listening socket closed (reset by the kernel), or a worker
            accepted it and closed it unread; a client cannot tell which;
  refused   a NEW connection that could not be made (the listener is closed
            once the server stops): expected after a stop.

Resets (ECONNRESET on a connection, whichever of the above it was) are also
counted on their own: "resets".

Usage: proof-client.py PORT SECONDS CONNECTIONS [http|echo]
http (the default): each connection sends GET / and waits for the response,
over and over; a response with "Connection: close" ends the connection and a
new one is made.
echo (tests/proof-serve.sh, against examples/echo): each connection sends a
line and waits for its echo, then pauses either briefly (0-0.4 s) or long
(1.6-2 s), never near the server's 1 s stop grace: at a stop the server
closes a connection once it has been idle for the grace, so a client's long
pause is where that close lands.  A client finds it before it sends (as an
HTTP client checks a kept connection before reusing it): "closed_idle", then
a new connection.
Prints "key value" lines: sent answered lost lost_first refused closed_by_server
closed_idle resets reconnects, and the first few errors as "# ..." lines.
"""
import asyncio
import random
import sys
import time

REQ = b"GET / HTTP/1.1\r\nHost: proof\r\n\r\n"
c = dict(sent=0, answered=0, lost=0, lost_first=0, refused=0, closed_by_server=0, closed_idle=0, resets=0,
         reconnects=0)
errors = []


async def one(port, deadline):
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except (OSError, asyncio.TimeoutError):
            c["refused"] += 1
            await asyncio.sleep(0.05)
            continue
        c["reconnects"] += 1
        first = True
        try:
            while time.monotonic() < deadline:
                w.write(REQ)
                c["sent"] += 1
                try:
                    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
                    n = 0
                    for line in head.split(b"\r\n"):
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            n = int(v)
                    await asyncio.wait_for(r.readexactly(n), 5)
                except (asyncio.IncompleteReadError, OSError, asyncio.TimeoutError, ValueError) as e:
                    c["resets"] += isinstance(e, ConnectionResetError)
                    what = "lost_first" if first else "lost"
                    c[what] += 1
                    if len(errors) < 5:
                        errors.append("%s: %r" % (what, e))
                    break
                first = False
                if not head.startswith(b"HTTP/1.1 200 "):
                    c["lost"] += 1
                    break
                c["answered"] += 1
                if b"connection: close" in head.lower():
                    c["closed_by_server"] += 1
                    break
        finally:
            w.close()


async def one_echo(port, deadline, k):
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except (OSError, asyncio.TimeoutError):
            c["refused"] += 1
            await asyncio.sleep(0.05)
            continue
        c["reconnects"] += 1
        first, n = True, 0
        try:
            while time.monotonic() < deadline:
                if r.at_eof():
                    c["closed_idle"] += 1
                    break
                line = b"echo %d %d\n" % (k, n)
                n += 1
                w.write(line)
                c["sent"] += 1
                try:
                    back = await asyncio.wait_for(r.readexactly(len(line)), 5)
                except (asyncio.IncompleteReadError, OSError, asyncio.TimeoutError) as e:
                    c["resets"] += isinstance(e, ConnectionResetError)
                    what = "lost_first" if first else "lost"
                    c[what] += 1
                    if len(errors) < 5:
                        errors.append("%s: %r" % (what, e))
                    break
                first = False
                if back != line:
                    c["lost"] += 1
                    break
                c["answered"] += 1
                pause = random.uniform(0, 0.4) if random.random() < 0.7 else random.uniform(1.6, 2.0)
                await asyncio.sleep(pause)
        finally:
            w.close()


async def main():
    port, secs, conns = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "http"
    deadline = time.monotonic() + secs
    if mode == "echo":
        await asyncio.gather(*(one_echo(port, deadline, k) for k in range(conns)))
    else:
        await asyncio.gather(*(one(port, deadline) for _ in range(conns)))


asyncio.run(main())
for k, v in c.items():
    print(k, v)
for e in errors:
    print("#", e)
