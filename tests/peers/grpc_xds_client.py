#!/usr/bin/env python3
"""Proxyless gRPC xDS client, a peer for Skiff's xDS control-plane interop tests.

It opens a channel to ``xds:///NAME`` (gRPC's own xDS resolver and load
balancers, configured over ADS by the control plane named in the bootstrap),
makes N unary calls, and prints one line per call:

    call=1 status=OK instance=b1 message="Hello, skiff!" ms=3
    call=2 status=UNAVAILABLE details="..." ms=5001

then a last line ``summary ok=N failed=M instances=b1:5,b2:5``.
Exit code: 0 if every call succeeded, 1 otherwise, 2 on bad usage.

No generated stubs: the request and reply are encoded by hand. The default
method is Skiff's demo greeter, ``/skiff.demo.v1.Greeter/SayHello``
(examples/proto/greeter.proto): HelloRequest{1: name}, HelloReply{1: message,
2: instance}. The greeter names its backend instance in ``instance``; the
Python client API has no way to read the peer address of a call, so
``instance`` is how a test sees which backend answered. ``helloworld``
servers (``/helloworld.Greeter/SayHello``) work too: same field 1 both ways.

Every call has a deadline (--deadline, default 5 s), so this never hangs.
A call fails fast with UNAVAILABLE while the xDS config is missing or
invalid; --wait-for-ready makes it wait (up to the deadline) instead. The
client may exit before its ACK/NACK of the last response reaches the control
plane; --linger N keeps the ADS stream open N more seconds.

Environment (all optional; flags win):
  GRPC_XDS_BOOTSTRAP  bootstrap path (--bootstrap)
  XDS_TARGET          resource name, e.g. greeter (--target)
  XDS_CALLS           number of calls (--calls)
  XDS_DEADLINE        per-call deadline in seconds (--deadline)
"""

import argparse
import os
import sys
import time


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_request(name):
    """HelloRequest{name = 1: string}: 0x0a, varint(len), utf-8 bytes."""
    raw = name.encode("utf-8")
    return b"\x0a" + varint(len(raw)) + raw


def decode_strings(buf):
    """Length-delimited fields of a message as {field_number: str}; skips
    varint/fixed fields, so unknown extra fields do no harm."""
    fields = {}
    i = 0

    def read_varint():
        nonlocal i
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(buf):
        key = read_varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            read_varint()
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n = read_varint()
            fields[num] = bytes(buf[i : i + n]).decode("utf-8", "replace")
            i += n
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", default=os.environ.get("GRPC_XDS_BOOTSTRAP"),
                   help="gRPC xDS bootstrap JSON file (env GRPC_XDS_BOOTSTRAP)")
    p.add_argument("--target", default=os.environ.get("XDS_TARGET", "greeter"),
                   help="xDS listener name; the channel target is xds:///TARGET")
    p.add_argument("--calls", type=int, default=int(os.environ.get("XDS_CALLS", "1")))
    p.add_argument("--deadline", type=float,
                   default=float(os.environ.get("XDS_DEADLINE", "5")),
                   help="per-call deadline, seconds")
    p.add_argument("--method", default="/skiff.demo.v1.Greeter/SayHello")
    p.add_argument("--name", default="skiff", help="HelloRequest.name ('status:N' asks the demo greeter for status N)")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="request metadata, repeatable")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between calls")
    p.add_argument("--until-instance", metavar="NAME",
                   help="stop at the first reply from backend instance NAME (--calls is then "
                        "the most calls made); exit 1 if it never answers")
    p.add_argument("--wait-for-ready", action="store_true",
                   help="queue calls while the channel is not READY (until the deadline) "
                        "instead of failing fast with UNAVAILABLE")
    p.add_argument("--linger", type=float, default=0.0,
                   help="seconds to keep the channel (and its ADS stream) open after the "
                        "last call, so the control plane sees the final ACK/NACK")
    p.add_argument("--trace", action="store_true",
                   help="gRPC debug logs of the xDS client on stderr")
    a = p.parse_args()

    if not a.bootstrap:
        p.error("no bootstrap: pass --bootstrap or set GRPC_XDS_BOOTSTRAP")
    if not os.path.isfile(a.bootstrap):
        p.error(f"bootstrap file not found: {a.bootstrap}")
    # gRPC reads these when it first builds its XdsClient / initialises; set
    # them before importing grpc.
    os.environ["GRPC_XDS_BOOTSTRAP"] = os.path.abspath(a.bootstrap)
    if a.trace:
        os.environ.setdefault("GRPC_VERBOSITY", "debug")
        os.environ.setdefault("GRPC_TRACE", "xds_client,xds_resolver,cds_lb,xds_cluster_impl_lb")

    import grpc  # noqa: E402  (after the environment is set)

    metadata = []
    for kv in a.metadata:
        k, sep, v = kv.partition("=")
        if not sep:
            p.error(f"--metadata wants KEY=VALUE, got {kv!r}")
        metadata.append((k.lower(), v))

    target = f"xds:///{a.target}"
    print(f"# grpcio {grpc.__version__} target={target} bootstrap={a.bootstrap}", flush=True)

    ok = failed = 0
    instances = {}
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            a.method,
            request_serializer=lambda b: b,   # bytes in ...
            response_deserializer=lambda b: b,  # ... bytes out
        )
        request = encode_request(a.name)
        for n in range(1, a.calls + 1):
            if n > 1 and a.interval > 0:
                time.sleep(a.interval)
            start = time.monotonic()
            try:
                reply, _ = call.with_call(
                    request,
                    timeout=a.deadline,
                    metadata=metadata or None,
                    wait_for_ready=a.wait_for_ready or None,
                )
                ms = int((time.monotonic() - start) * 1000)
                f = decode_strings(reply)
                inst = f.get(2, "")
                instances[inst] = instances.get(inst, 0) + 1
                ok += 1
                print(f"call={n} status=OK instance={inst or '-'} message={quote(f.get(1, ''))} ms={ms}",
                      flush=True)
                if a.until_instance and inst == a.until_instance:
                    break
            except grpc.RpcError as e:
                ms = int((time.monotonic() - start) * 1000)
                failed += 1
                code = e.code().name if e.code() else "UNKNOWN"
                print(f"call={n} status={code} details={quote(e.details() or '')} ms={ms}", flush=True)
        if a.linger > 0:
            time.sleep(a.linger)

    inst = ",".join(f"{k or '-'}:{v}" for k, v in sorted(instances.items()))
    print(f"summary ok={ok} failed={failed} instances={inst}", flush=True)
    reached = not a.until_instance or a.until_instance in instances
    return 0 if failed == 0 and reached else 1


if __name__ == "__main__":
    sys.exit(main())
