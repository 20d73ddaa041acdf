#!/usr/bin/env python3
"""The `db` workload of `cargo xtask bench`: an HTTP service with no tracing
code that makes four database calls for every request, on connections of
its own per server thread (so that wrk's connections run side by side):
a PostgreSQL query in the simple protocol and one in the extended protocol,
a MariaDB query, and a Redis pipeline that writes.

Every call reads or overwrites a fixed set of rows. The test suite's
`db_service.py` inserts a row per request and counts them: its rate fell as
its table grew, and every insert waited for PostgreSQL's fsync, which made
the rounds of a benchmark incomparable.

Usage: db_flow.py HTTP_PORT PG_PORT MYSQL_PORT REDIS_PORT ; prints READY.
"""
import http.server, socketserver, sys, threading

import psycopg, pymysql, redis

port, pg_port, my_port, redis_port = (int(a) for a in sys.argv[1:5])
local = threading.local()


def connections():
    c = getattr(local, "c", None)
    if c is None:
        c = local.c = (
            psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="sonde",
                            sslmode="disable", autocommit=True),
            pymysql.connect(host="127.0.0.1", port=my_port, user="sonde", password="sonde",
                            database="sonde", autocommit=True),
            redis.Redis(host="127.0.0.1", port=redis_port),
        )
    return c


def setup():
    pg, my, _ = connections()
    pg.execute("CREATE TABLE IF NOT EXISTS flow (id int PRIMARY KEY, name text)")
    pg.execute("INSERT INTO flow SELECT i, 'item ' || i FROM generate_series(1, 100) i ON CONFLICT DO NOTHING")
    with my.cursor() as c:
        c.execute("CREATE TABLE IF NOT EXISTS flow (id int PRIMARY KEY, name varchar(64))")
        c.execute("INSERT IGNORE INTO flow VALUES (1, 'item 1'), (2, 'item 2'), (3, 'item 3')")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def do_GET(self):
        pg, my, rd = connections()
        with psycopg.ClientCursor(pg) as cur:  # simple query protocol
            cur.execute("SELECT name FROM flow WHERE id = %s", (7,))
            cur.fetchall()
        pg.execute("SELECT count(*) FROM flow WHERE id < %s", (50,)).fetchall()  # extended
        with my.cursor() as c:
            c.execute("SELECT id, name FROM flow WHERE id > %s", (0,))
            c.fetchall()
        p = rd.pipeline(transaction=False)
        p.set("last", self.path); p.incr("hits"); p.get("last")
        p.execute()
        body = b"done"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


setup()
srv = Server(("127.0.0.1", port), Handler)
print("READY", flush=True)
srv.serve_forever()
