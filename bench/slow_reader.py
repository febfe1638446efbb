#!/usr/bin/env python3
"""A backend that reads request bodies slowly, for bench/slow_peers.sh.

  slow_reader.py --port 9000 --rate 1M

Each connection: one HTTP/1.1 request with a Content-Length body, read at
RATE bytes a second (64 KiB at a time, paced), then a 200 whose body is the
number of body bytes read. Standard library only.
"""

import argparse
import socket
import threading
import time


def rate_bytes(text):
    units = {"K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def serve(conn, rate):
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if b"100-continue" in head.lower():
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        got = len(rest)
        step = 64 * 1024
        start = time.monotonic()
        while got < length:
            chunk = conn.recv(min(step, length - got))
            if not chunk:
                break
            got += len(chunk)
            # Paced: `got` bytes may have taken got/rate seconds by now.
            ahead = got / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        body = str(got).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", default="1M", help="bytes a second, curl's units (1M = 1 MiB)")
    args = ap.parse_args()
    rate = rate_bytes(args.rate)
    srv = socket.create_server(("127.0.0.1", args.port))
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, rate), daemon=True).start()


if __name__ == "__main__":
    main()
