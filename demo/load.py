#!/usr/bin/env python3
"""Drives the demo's three flows over keep-alive connections, like a device
fleet and its users would:
  login        POST /login {"user": id}
  device data  POST /data {"device": id, "value": x}
  gates        GET /gates/<id>

Usage: load.py LOGIN_ADDR INGESTION_ADDR GATES_ADDR [--count N] [--users U] [--interval S]
Addresses are host:port. With --count, sends N requests per flow and prints
{"login": ok, "data": ok, "gates": ok, "errors": n}; without it, runs until
interrupted. Users cycle through 1..U from --first-user (a cache miss the first time each).
With --hold, it stays alive after the summary until stdin closes: a process
that has exited can no longer be named from its environment.
"""
import argparse, http.client, json, sys, time


class Client:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
        resp = self.conn.getresponse()
        resp.read()
        return resp.status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("login"); ap.add_argument("ingestion"); ap.add_argument("gates")
    ap.add_argument("--count", type=int)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--first-user", type=int, default=1)
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between rounds when running until interrupted")
    args = ap.parse_args()
    login, ingestion, gates = Client(args.login), Client(args.ingestion), Client(args.gates)
    # Readings differ from request to request, across generators too (a
    # real device's do): identical messages in flight at once are the one
    # case publish -> consume matching cannot tell apart.
    reading = lambda i: args.first_user - 1 + i
    ok = {"login": 0, "data": 0, "gates": 0, "errors": 0}
    i = 0
    try:
        while args.count is None or i < args.count:
            for flow, status in [("login", login.call("POST", "/login", {"user": (args.first_user - 1 + i) % args.users + 1})),
                                 ("data", ingestion.call("POST", "/data", {"device": i % 7 + 1, "value": reading(i)})),
                                 ("gates", gates.call("GET", f"/gates/{i % 5 + 1}"))]:
                if status < 400:
                    ok[flow] += 1
                else:
                    ok["errors"] += 1
            i += 1
            if args.count is None:
                print(f"round {i}: {ok}", file=sys.stderr, flush=True)
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    print(json.dumps(ok), flush=True)
    if args.hold:
        sys.stdin.read()


if __name__ == "__main__":
    main()
