#!/usr/bin/env python3
"""Idle keep-alive client for benches/e2e.sh SCENARIO=idle.

Opens N connections to HOST:PORT, sends one GET / on each (HTTP/1.1, or
HTTP/2 with prior knowledge for h2c), reads the whole reply, then holds every
connection open and silent. Once all are open it writes "ok held seconds" to
READY and waits until it is killed (or until READY is removed: then it closes
everything and exits, which is how the bench measures memory given back).

    idle_client.py HOST PORT N h1|h2c READY
"""
import asyncio
import os
import struct
import sys
import time

host, port, n, proto, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
H1_REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, HEADERS, DATA, GOAWAY, RST = 4, 1, 0, 7, 3
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
BATCH = 64


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


# HPACK (RFC 7541, static table): :method GET (2), :path / (4),
# :scheme http (6), :authority "bench" (literal, indexed name 1).
H2_REQ = (
    H2_PREFACE
    + frame(SETTINGS, 0, 0)
    + frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\x82\x84\x86\x41\x05bench")
)


async def h1(r, w):
    w.write(H1_REQ)
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    return head.startswith(b"HTTP/1.1 2")


async def h2(r, w):
    w.write(H2_REQ)
    status_ok = False
    while True:
        head = await r.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await r.readexactly(length)
        if kind == SETTINGS and not flags & ACK:
            w.write(frame(SETTINGS, ACK, 0))
        elif kind in (GOAWAY, RST):
            return False
        elif kind == HEADERS and stream == 1:
            # :status 200 is static index 8 (0x88) in every server's encoding here.
            status_ok = status_ok or b"\x88" in payload[:8]
        if stream == 1 and kind in (HEADERS, DATA) and flags & END_STREAM:
            return status_ok


async def one(conns):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        ok = await asyncio.wait_for((h2 if proto == "h2c" else h1)(r, w), 10)
        conns.append(w)
        return ok
    except Exception:
        return False


async def main():
    conns, ok, t0 = [], 0, time.monotonic()
    # Batches of 64 (as many requests in flight as the basic scenario): the
    # proxies' upstream pools stay small, so what is measured is the cost of
    # the client connections.
    for start in range(0, n, BATCH):
        ok += sum(await asyncio.gather(*(one(conns) for _ in range(start, min(n, start + BATCH)))))
    with open(ready, "w") as f:
        f.write(f"{ok} {len(conns)} {time.monotonic() - t0:.1f}\n")
    while os.path.exists(ready):
        await asyncio.sleep(0.2)
    for w in conns:
        w.close()


asyncio.run(main())
