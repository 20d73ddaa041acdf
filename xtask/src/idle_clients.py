"""The `idle` bench workload's clients: N keep-alive connections to one
HTTP server, each used for one request and then held open, doing nothing.

Usage: idle_clients.py HOST PORT N. Prints `ready SECONDS` once every
connection has had its response (SECONDS: how long opening and serving
them took), then holds them until stdin closes.
"""
import resource
import socket
import sys
import time

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
request = f"GET /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
started = time.monotonic()
held = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection {i}: the server closed it before answering")
        head += chunk
    # The body is small (the workload's 612-byte file): read it whole.
    length = int(
        next(
            l.split(b":", 1)[1]
            for l in head.split(b"\r\n")
            if l.lower().startswith(b"content-length:")
        )
    )
    body = head.split(b"\r\n\r\n", 1)[1]
    while len(body) < length:
        body += s.recv(4096)
    held.append(s)
print(f"ready {time.monotonic() - started:.2f}", flush=True)
sys.stdin.read()
for s in held:
    s.close()
