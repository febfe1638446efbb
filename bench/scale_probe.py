#!/usr/bin/env python3
"""Timing and memory probes for bench/scale.sh. Each prints `METRIC VALUE`
lines on stdout (bench/scale.sh files them under the cell it measures).

  ready  --port P --host H --path /p --since-file F --pid-file F [--body hello]
         Started before the proxy; polls (a new connection each try, ~1 ms
         apart) until the request answers 200 with the body; prints
         `ready_s` = now - the wall-clock time in F (when bash started the
         proxy: its $EPOCHREALTIME).
  pss    --pid PID
         The proxy's Pss once steady (bench/idle_conns.py's measure): `pss_kib`.
  pool   --port P --pid PID --n N --upstream-port EP
         Memory per pooled upstream connection: Pss and the proxy's
         established connections to EP (ss -tnp, by pid) after one request,
         then after N more requests in sequence on one keep-alive connection
         (a round-robin cluster of N endpoints: each then holds one idle
         pooled connection), once the count and the memory have settled.
  reload --port P --host H --path /p --stage DIR --count K --pid PID
         K config changes: renames stage/alt (then stage/base, in turn) over
         the file named in stage/target and times, from the rename, until a
         request answers with the new body (`moved` / `hello`): `reload_ms`
         for each; with --pss, `pss_reload1_kib` after the first and
         `pss_reload_last_kib` after the last, each --settle seconds after
         the change answered; `reloads` = how many were applied. Stops at
         the first change not seen within --timeout (`reload_timeouts 1`),
         or when the proxy exits (`proxy_exited 1`, exit status 1).

Standard library only.
"""

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idle_conns import memory_kib  # noqa: E402  (Pss summed over the process family)

BODIES = {"alt": "moved\n", "base": "hello\n"}


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def get(port, host, path, timeout=2.0):
    """(status, body) of one request on a new connection, or (None, error)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": host} if host else {})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return None, str(e)
    finally:
        c.close()


def steady_pss(pid, secs=3.0):
    """Pss once two readings 200 ms apart are within 64 KiB or 1% (or the
    last reading after `secs`), as idle_conns.steady."""
    deadline = time.monotonic() + secs
    last = memory_kib(pid)[0]
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = memory_kib(pid)[0]
        if abs(now - last) <= max(64, last // 100):
            return now
        last = now
    return last


def upstream_conns(pid, port):
    """Established TCP connections of `pid` to remote port `port` (ss -tnp);
    /proc when ss is missing."""
    try:
        out = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( dport = :{port} )"],
            capture_output=True, text=True, check=True,
        ).stdout
        return sum(1 for line in out.splitlines() if re.search(rf"pid={pid}\b", line))
    except (OSError, subprocess.CalledProcessError):
        pass
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            if p[3] == "01" and int(p[2].rsplit(":", 1)[1], 16) == port and p[9] in inodes:
                n += 1
    return n


def read_file_wait(path, deadline):
    while time.monotonic() < deadline:
        try:
            text = open(path).read().strip()
            if text:
                return text
        except OSError:
            pass
        time.sleep(0.001)
    sys.exit(f"scale_probe: {path} never appeared")


def cmd_ready(a):
    # Started before the proxy (so that Python's own start-up is not counted):
    # the proxy's start time and pid come from files bash writes around the
    # spawn.
    deadline = time.monotonic() + a.timeout
    since = read_file_wait(a.since_file, deadline)
    pid = 0
    tries = 0
    last = None
    while time.monotonic() < deadline:
        tries += 1
        status, body = get(a.port, a.host, a.path, timeout=max(1.0, a.timeout / 10))
        if status == 200 and body == a.body:
            print(f"ready_s {time.time() - float(since.replace(',', '.')):.4f}")
            return 0
        last = (status, body[:200])
        if not pid and os.path.exists(a.pid_file):
            pid = int(read_file_wait(a.pid_file, deadline))
        if pid and not alive(pid):
            sys.exit(f"scale_probe ready: the proxy (pid {pid}) exited; last answer {last}")
        time.sleep(0.001)
    sys.exit(f"scale_probe ready: no 200 '{a.body.strip()}' within {a.timeout}s after {tries} tries; last answer {last}")


def cmd_pss(a):
    print(f"pss_kib {steady_pss(a.pid)}")
    return 0


def cmd_pool(a):
    ok, body = get(a.port, a.host, a.path)
    if ok != 200:
        sys.exit(f"scale_probe pool: first request answered {ok} {body[:200]}")
    time.sleep(0.3)
    before = steady_pss(a.pid)
    c_before = upstream_conns(a.pid, a.upstream_port)
    c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
    bad = 0
    t0 = time.monotonic()
    for _ in range(a.n):
        try:
            c.request("GET", a.path, headers={"Host": a.host} if a.host else {})
            r = c.getresponse()
            r.read()
            bad += r.status != 200
        except (OSError, http.client.HTTPException):
            bad += 1
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
    c.close()
    secs = time.monotonic() - t0
    # Let the count settle (a connection goes back to its pool after the
    # response), then the memory.
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = upstream_conns(a.pid, a.upstream_port)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 0.5:
            break
        time.sleep(0.1)
    after = steady_pss(a.pid, 5.0)
    c_after = upstream_conns(a.pid, a.upstream_port)
    print(f"pool_pss_before_kib {before}")
    print(f"pool_pss_after_kib {after}")
    print(f"pool_conns_before {c_before}")
    print(f"pool_conns_after {c_after}")
    print(f"pool_failed {bad}")
    print(f"pool_secs {secs:.3f}")
    return 0


def cmd_reload(a):
    stage = a.stage
    target = open(os.path.join(stage, "target")).read().strip()
    nxt = os.path.join(stage, "next")
    done = 0
    for i in range(a.count):
        which = "alt" if i % 2 == 0 else "base"
        # Staged outside the watched directory (same filesystem): only the
        # rename shows up there.
        shutil.copyfile(os.path.join(stage, which), nxt)
        time.sleep(a.gap)
        want = BODIES[which]
        t0 = time.monotonic()
        os.rename(nxt, target)
        deadline = t0 + a.timeout
        seen = False
        while time.monotonic() < deadline:
            status, body = get(a.port, a.host, a.path)
            if status == 200 and body == want:
                seen = True
                break
            if not alive(a.pid):
                print("proxy_exited 1")
                print(f"reloads {done}")
                sys.exit(f"scale_probe reload: the proxy (pid {a.pid}) exited during reload {i + 1}")
            time.sleep(0.001)
        if not seen:
            print("reload_timeouts 1")
            print(f"scale_probe reload: change {i + 1} not seen within {a.timeout}s", file=sys.stderr)
            break
        print(f"reload_ms {(time.monotonic() - t0) * 1000:.2f}")
        done += 1
        if done == 1 and a.pss:
            time.sleep(a.settle)
            print(f"pss_reload1_kib {steady_pss(a.pid)}")
        sys.stdout.flush()
    if done and a.pss:
        time.sleep(a.settle)
        print(f"pss_reload_last_kib {steady_pss(a.pid)}")
    print(f"reloads {done}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pid", type=int, default=0)
    common.add_argument("--port", type=int)
    common.add_argument("--host", default="")
    common.add_argument("--path", default="/")
    p = sub.add_parser("ready", parents=[common])
    p.add_argument("--since-file", required=True, help="holds the start time (epoch seconds)")
    p.add_argument("--pid-file", required=True, help="holds the proxy's pid (once started)")
    p.add_argument("--body", default="hello\n")
    p.add_argument("--timeout", type=float, default=300)
    sub.add_parser("pss", parents=[common])
    p = sub.add_parser("pool", parents=[common])
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    p = sub.add_parser("reload", parents=[common])
    p.add_argument("--stage", required=True)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--gap", type=float, default=0.1, help="seconds between staging a file and renaming it")
    p.add_argument("--pss", action="store_true", help="measure Pss after the first and the last reload")
    p.add_argument("--settle", type=float, default=0, help="seconds to wait before each Pss measurement")
    a = ap.parse_args()
    return {"ready": cmd_ready, "pss": cmd_pss, "pool": cmd_pool, "reload": cmd_reload}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
