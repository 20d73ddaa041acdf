"""tsmanager: POST /series appends a reading to PostgreSQL."""
import threading

from common import postgres, serve

pg, lock = postgres(), threading.Lock()
pg.execute("CREATE TABLE IF NOT EXISTS series (device int, value float8, at timestamptz DEFAULT now())")


def append(req, parts, body):
    with lock:
        pg.execute("INSERT INTO series (device, value) VALUES (%s, %s)", (int(body["device"]), float(body["value"])))
    return 201, {"ok": True}


serve({("POST", "series"): append})
