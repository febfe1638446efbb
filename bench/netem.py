#!/usr/bin/env python3
"""A userspace `tc netem` for bench/netem.sh: delay, jitter and loss on a
real IP link between two network namespaces.

This machine's kernel has no `sch_netem` qdisc, but it has TUN devices. So
the link between the namespaces is two TUN devices, one in each, and this
process carries every IP packet from one to the other, holding each for the
configured delay (plus jitter) and dropping the configured share. The
endpoints' kernels run real TCP over it: lost segments are retransmitted by
TCP, delayed ones stretch the RTT, exactly as over a netem qdisc. Packets of
one direction leave in the order they came (jitter never reorders).

    netem.py --near tun-near --far tun-far --far-netns NAME \\
             --delay-ms 20 --jitter-ms 5 --loss 0.01 [--seed 1]

The near TUN is opened in this process's namespace, the far one inside
NAME (setns(2) through ctypes: Python 3.11 has no os.setns). Both devices
must exist (`ip tuntap add ... mode tun`); addresses and routes are the
caller's. SIGUSR1 re-reads the impairment from --control (a JSON file with
the same keys), so one relay serves every phase of a run. Runs until
killed; on SIGTERM it prints what it carried and dropped as one JSON line.
Standard library only.
"""

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    ifr = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


def open_tun_in(netns, name):
    """Opens TUN `name` inside network namespace `netns`, then comes back."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        fd = open_tun(name)
        if libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        return fd
    finally:
        os.close(home)
        os.close(target)


class Impairment:
    def __init__(self, delay_ms=0.0, jitter_ms=0.0, loss=0.0):
        self.delay = delay_ms / 1000.0
        self.jitter = jitter_ms / 1000.0
        self.loss = loss

    @classmethod
    def load(cls, path):
        with open(path) as f:
            d = json.load(f)
        return cls(d.get("delay_ms", 0.0), d.get("jitter_ms", 0.0), d.get("loss", 0.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--near", required=True)
    ap.add_argument("--far", required=True)
    ap.add_argument("--far-netns", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--control", help="JSON file re-read on SIGUSR1")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    imp = Impairment(args.delay_ms, args.jitter_ms, args.loss)
    near = open_tun(args.near)
    far = open_tun_in(args.far_netns, args.far)
    other = {near: far, far: near}
    # Per direction: the time the last packet leaves, so none overtakes it.
    last_out = {near: 0.0, far: 0.0}
    queue = []  # (leave_at, seq, out_fd, packet)
    seq = 0
    stats = {"carried": 0, "dropped": 0}
    reload = []

    def on_usr1(_sig, _frame):
        reload.append(True)

    def on_term(_sig, _frame):
        print(json.dumps(stats), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)

    while True:
        if reload and args.control:
            reload.clear()
            imp = Impairment.load(args.control)
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, packet = heapq.heappop(queue)
            try:
                os.write(out, packet)
                stats["carried"] += 1
            except BlockingIOError:
                stats["dropped"] += 1
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        try:
            readable, _, _ = select.select([near, far], [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            # Drain what is there: many packets per wakeup under load.
            for _ in range(256):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if imp.loss > 0 and rng.random() < imp.loss:
                    stats["dropped"] += 1
                    continue
                out = other[fd]
                leave = now + imp.delay
                if imp.jitter > 0:
                    leave += rng.uniform(-imp.jitter, imp.jitter)
                leave = max(leave, last_out[out], now)
                last_out[out] = leave
                seq += 1
                heapq.heappush(queue, (leave, seq, out, packet))


if __name__ == "__main__":
    main()
