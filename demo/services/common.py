"""Plumbing shared by the demo services: an HTTP server, JSON replies, and
connections to PostgreSQL, Redis and RabbitMQ from environment variables.

Nothing here knows about tracing: sonde sees these services from the kernel.
Every service reads its peers from the environment (set by demo.py):
  PORT             the HTTP port to serve on (HTTP services)
  PG, REDIS, AMQP  host:port of the infrastructure
  <NAME>_URL       base URL of a downstream HTTP service, e.g. ACCUSR_URL
"""
import http.client, http.server, json, os, socketserver, sys, threading, urllib.parse


def addr(var):
    host, port = os.environ[var].rsplit(":", 1)
    return host, int(port)


def postgres():
    import psycopg
    host, port = addr("PG")
    return psycopg.connect(host=host, port=port, user="postgres", dbname="sonde", sslmode="disable", autocommit=True)


def redis_client():
    import redis
    host, port = addr("REDIS")
    return redis.Redis(host=host, port=port)


def amqp_channel():
    """A channel with the demo's topology declared (idempotent, so every
    service can declare it and start in any order)."""
    import pika
    host, port = addr("AMQP")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port, heartbeat=0))
    ch = conn.channel()
    ch.exchange_declare("devices", exchange_type="direct")
    ch.exchange_declare("condition", exchange_type="direct")
    ch.exchange_declare("gatescheduler", exchange_type="fanout")
    for queue, exchange, key in [("statusup", "devices", "status"), ("condition.evaluate", "condition", "evaluate"),
                                 ("data", "gatescheduler", ""), ("condition", "gatescheduler", "")]:
        ch.queue_declare(queue)
        ch.queue_bind(queue, exchange, key)
    return ch


def publish(ch, exchange, key, body):
    import pika
    ch.basic_publish(exchange, key, json.dumps(body).encode(), pika.BasicProperties(content_type="application/json"))


def consume(queue, handler):
    """Runs `handler(body)` for each message of `queue`, acknowledging after it."""
    ch = amqp_channel()

    def on_message(channel, method, properties, body):
        handler(ch, json.loads(body))
        channel.basic_ack(method.delivery_tag)

    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(queue, on_message)
    print("READY", flush=True)
    ch.start_consuming()


class Downstream:
    """A keep-alive HTTP client to one downstream service (one connection per thread)."""

    def __init__(self, var):
        u = urllib.parse.urlsplit(os.environ[var])
        self.host, self.port = u.hostname, u.port
        self.local = threading.local()

    def call(self, method, path, body=None):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, path, data, headers)
            resp = conn.getresponse()
        except (http.client.HTTPException, OSError):
            conn.close()  # the server closed a kept-alive connection: reconnect once
            conn.request(method, path, data, headers)
            resp = conn.getresponse()
        payload = resp.read()
        return resp.status, (json.loads(payload) if payload else None)


class Handler(http.server.BaseHTTPRequestHandler):
    """Dispatches to `routes`: {(method, first path segment): fn(handler, parts, body) -> (status, obj)}."""
    protocol_version = "HTTP/1.1"
    routes = {}

    def log_message(self, *a):
        pass

    def handle_any(self):
        parts = [p for p in urllib.parse.urlsplit(self.path).path.split("/") if p]
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        fn = self.routes.get((self.command, parts[0] if parts else ""))
        status, obj = fn(self, parts, body) if fn else (404, {"error": "no route"})
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(routes):
    """Serves `routes` on $PORT (all addresses: the service may run in a container)."""
    handler = type("Routes", (Handler,), {"routes": routes})
    srv = Server((os.environ.get("BIND", "0.0.0.0"), int(os.environ["PORT"])), handler)
    print("READY", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)
