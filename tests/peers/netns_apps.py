#!/usr/bin/env python3
"""Apps for Skiff's network-namespace test (proxy/tests/netns.rs), each on
0.0.0.0:PORT until killed; prints "ready PORT" once listening.

  netns_apps.py http NAME PORT       HTTP/1.1: answers every request with JSON
                                     {"app": NAME, "path": ..., "headers": {...}}
  netns_apps.py echo PORT            TCP: sends back whatever it reads
  netns_apps.py greet PORT           TCP, server first: says "hello from the server\\n"
                                     on accept, then echoes
"""
import http.server
import json
import socket
import socketserver
import sys
import threading


def http_app(name, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = json.dumps({
                "app": name,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("0.0.0.0", port), Handler)
    print(f"ready {port}", flush=True)
    server.serve_forever()


def tcp_app(port, greet):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    print(f"ready {port}", flush=True)

    def serve(c):
        with c:
            if greet:
                c.sendall(b"hello from the server\n")
            while True:
                data = c.recv(65536)
                if not data:
                    return
                c.sendall(data)

    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def main():
    kind = sys.argv[1]
    if kind == "http":
        http_app(sys.argv[2], int(sys.argv[3]))
    elif kind in ("echo", "greet"):
        tcp_app(int(sys.argv[2]), kind == "greet")
    else:
        sys.exit(f"unknown app {kind!r}")


if __name__ == "__main__":
    main()
