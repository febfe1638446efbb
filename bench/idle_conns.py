#!/usr/bin/env python3
"""Memory a proxy holds per idle client connection (bench/run.sh).

Opens N connections to PORT, sends one request on each (HTTP/1.1 keep-alive,
or h2c with prior knowledge: preface, SETTINGS exchange, one GET) and reads the
whole response, then keeps every connection open and idle. The proxy's memory
(Pss from /proc/PID/smaps_rollup, summed over PID and its child processes;
VmRSS too) is read before the first connection, once it is steady, and
again once all N are idle, the proxy's side shows N more established
connections, and the memory has stopped moving. Prints one JSON object:

  {"n": N, "proto": "h1", "before_pss_kib": ..., "after_pss_kib": ...,
   "per_conn_pss_kib": ..., "before_rss_kib": ..., "after_rss_kib": ...,
   "per_conn_rss_kib": ..., "established": ..., "upstream_conns": ...,
   "closed_by_proxy": 0, "open_secs": ...}

`upstream_conns` counts established TCP connections to --upstream-port (the
backend) while the clients are idle: what the proxy keeps pooled upstream,
and whose memory is included in the figure. Requests are sent by at most
--concurrency connections at a time, so a proxy needs no more than that
many upstream connections at once.

Standard library only (asyncio). The HTTP/2 side is the least a client needs:
no HPACK decoding (response headers are skipped), no flow control beyond
what one small response needs; PINGs are answered, a GOAWAY or a close
counts the connection as closed by the proxy.
"""

import argparse
import asyncio
import json
import os
import resource
import struct
import sys
import time


# ------------------------------------------------------------ the proxy ----


def family(pid):
    """PID and its descendants (nginx master and workers)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def memory_kib(pid):
    """(Pss, VmRSS) in KiB, summed over the process family."""
    pss = rss = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                        break
        except OSError:
            pass
    return pss, rss


def established(local_port=None, remote_port=None):
    """Established IPv4 TCP connections with this local / remote port."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split(None, 4)
            if parts[3] != "01":  # TCP_ESTABLISHED
                continue
            if local_port is not None and int(parts[1].rsplit(":", 1)[1], 16) != local_port:
                continue
            if remote_port is not None and int(parts[2].rsplit(":", 1)[1], 16) != remote_port:
                continue
            n += 1
    return n


# -------------------------------------------------------------- HTTP/1.1 ----


async def h1_conn(host, port, closed):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"HTTP/1.1 status {status.decode()}")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise RuntimeError("response without content-length")
    await reader.readexactly(length)

    async def watch():
        # Idle: anything but EOF is unexpected; EOF means the proxy closed it.
        try:
            await reader.read(1)
        except (ConnectionError, OSError):
            pass
        closed.append(1)

    return writer, asyncio.ensure_future(watch())


# ----------------------------------------------------------------- h2c ----

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x6, 0x7, 0x8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def hpack_literal(index, value):
    # Literal header field without indexing, name from the static table
    # (4-bit prefix: indexes here are below 15), value not Huffman-coded.
    value = value.encode()
    assert index < 15 and len(value) < 127
    return bytes([index, len(value)]) + value


async def read_frame(reader):
    head = await reader.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    kind, flags, stream = head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
    return kind, flags, stream, await reader.readexactly(length)


async def h2_conn(host, port, closed):
    reader, writer = await asyncio.open_connection(host, port)
    # :method GET (static 2), :scheme http (6), :path / (4), :authority (name 1).
    block = bytes([0x82, 0x86, 0x84]) + hpack_literal(1, f"{host}:{port}")
    writer.write(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    got_settings = got_ack = done = False
    status_ok = None
    while not (got_settings and got_ack and done):
        kind, flags, stream, payload = await read_frame(reader)
        if kind == SETTINGS:
            if flags & ACK:
                got_ack = True
            else:
                got_settings = True
                writer.write(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            writer.write(frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            raise RuntimeError("GOAWAY before the response")
        elif stream == 1 and kind == HEADERS:
            if status_ok is None:
                # :status 200 is static index 8 (0x88) when indexed; any
                # other first byte means some other status or encoding.
                status_ok = payload[:1] == b"\x88"
            if flags & END_STREAM:
                done = True
        elif stream == 1 and kind == DATA:
            if payload:
                # Give back the connection window the body used.
                inc = struct.pack(">I", len(payload))
                writer.write(frame(WINDOW_UPDATE, 0, 0, inc))
            if flags & END_STREAM:
                done = True
        elif stream == 1 and kind == 0x3:  # RST_STREAM
            raise RuntimeError("stream reset")
    if not status_ok:
        raise RuntimeError("h2 response status is not 200 (or not HPACK-indexed)")

    async def watch():
        # Idle: answer PINGs so a proxy that probes idle connections sees a
        # live peer; a GOAWAY or EOF means the proxy closed it.
        try:
            while True:
                kind, flags, _, payload = await read_frame(reader)
                if kind == PING and not flags & ACK:
                    writer.write(frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        closed.append(1)

    return writer, asyncio.ensure_future(watch())


# ---------------------------------------------------------------- main ----


async def steady(pid, deadline):
    """The proxy's memory once it has stopped moving: two readings 200 ms
    apart within 64 KiB or 1%, or the last reading at the deadline."""
    last = memory_kib(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = memory_kib(pid)
        if abs(now[0] - last[0]) <= max(64, last[0] // 100):
            return now
        last = now
    return last


async def settle(pid, port, n, timeout):
    """Wait until the proxy's side shows n established connections on port,
    then until its memory is steady."""
    deadline = time.monotonic() + timeout
    while established(local_port=port) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return await steady(pid, deadline)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--proto", choices=("h1", "h2"), default="h1")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--pid", type=int, required=True, help="the proxy (its children are counted too)")
    ap.add_argument("--upstream-port", type=int, help="the backend's port, to count pooled upstream connections")
    ap.add_argument("--concurrency", type=int, default=32, help="connections opening/requesting at once")
    ap.add_argument("--timeout", type=float, default=60, help="seconds for opening all N and settling")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n + 256
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < want:
            sys.exit(f"idle_conns: need {want} file descriptors, the limit is {soft} (ulimit -n)")

    before = await steady(args.pid, time.monotonic() + 3)
    before_est = established(local_port=args.port)
    closed = []
    conns = []
    opener = h1_conn if args.proto == "h1" else h2_conn
    sem = asyncio.Semaphore(args.concurrency)
    t0 = time.monotonic()

    async def one():
        async with sem:
            conns.append(await opener(args.host, args.port, closed))

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(args.n))), args.timeout)
    open_secs = time.monotonic() - t0
    after = await settle(args.pid, args.port, before_est + args.n, max(5.0, args.timeout - open_secs))
    est = established(local_port=args.port) - before_est
    upstream = established(remote_port=args.upstream_port) if args.upstream_port else None
    result = {
        "n": args.n,
        "proto": args.proto,
        "before_pss_kib": before[0],
        "after_pss_kib": after[0],
        "per_conn_pss_kib": round((after[0] - before[0]) / args.n, 3),
        "before_rss_kib": before[1],
        "after_rss_kib": after[1],
        "per_conn_rss_kib": round((after[1] - before[1]) / args.n, 3),
        "established": est,
        "upstream_conns": upstream,
        "closed_by_proxy": len(closed),
        "open_secs": round(open_secs, 3),
    }
    for writer, task in conns:
        task.cancel()
        writer.close()
    print(json.dumps(result))
    if closed:
        print(f"idle_conns: the proxy closed {len(closed)} of {args.n} idle connections", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
