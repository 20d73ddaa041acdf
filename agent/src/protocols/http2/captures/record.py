#!/usr/bin/env python3
"""Records the HTTP/2 golden fixtures through a recording proxy (see
../../record_db.py):
- grpc: grpcio's client and server (agent/tests/fixtures/grpc): unary calls,
  a server-streaming call and a NOT_FOUND, 8 in flight on one channel;
- h2c: nghttp, 5 concurrent streams on one connection, and curl\n  --http2-prior-knowledge, against nginx.
Writes <name>.c2s / .s2c / .order next to this file.
"""
import json, os, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
from record_db import Proxy  # noqa: E402

FIXTURE = os.path.join(HERE, "../../../../tests/fixtures/grpc/grpc_service.py")


def proxy(port, name):
    p = Proxy(port, name)
    p.name = os.path.join(HERE, name)
    return p


def grpc_session():
    port = 18463
    srv = subprocess.Popen([sys.executable, FIXTURE, "server", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert srv.stdout.readline().strip() == b"READY"
        p = proxy(port, "grpc")
        jobs = [["get", str(i)] for i in range(6)] + [["watch", "6"], ["get", "missing7"]]
        subprocess.run([sys.executable, FIXTURE, "client", str(p.port), json.dumps(jobs)], check=True)
        p.save()
    finally:
        srv.stdin.close(); srv.wait()


def h2c_session():
    d = tempfile.mkdtemp()
    os.makedirs(f"{d}/www/item")
    for i in range(4):
        with open(f"{d}/www/item/{i}", "w") as f:
            f.write(f"item {i}\n" * (1 + 300 * i))
    conf = f"""daemon off; pid {d}/nginx.pid; error_log stderr;
events {{}}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:18462 http2; root {d}/www; }} }}"""
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(conf)
    ng = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-e", "stderr"])
    try:
        import time; time.sleep(0.5)
        p = proxy(18462, "h2c")
        urls = [f"http://127.0.0.1:{p.port}/item/{i}" for i in range(4)] + [f"http://127.0.0.1:{p.port}/missing"]
        # One connection, all streams at once (curl 7.88 fails a second
        # request on an h2c connection, with or without --parallel).
        subprocess.run(["nghttp", "-n"] + urls, check=True)
        p.save()
        p = proxy(18462, "h2c_curl")
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/item/1"], check=True)
        p.save()
    finally:
        ng.terminate(); ng.wait()


if __name__ == "__main__":
    grpc_session()
    h2c_session()
