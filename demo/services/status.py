"""status: PUT /status/<device> upserts the device's last value in PostgreSQL."""
import threading

from common import postgres, serve

pg, lock = postgres(), threading.Lock()
pg.execute("CREATE TABLE IF NOT EXISTS device_status (device int PRIMARY KEY, value float8, at timestamptz)")


def put(req, parts, body):
    with lock:
        pg.execute("INSERT INTO device_status VALUES (%s, %s, now()) ON CONFLICT (device) DO UPDATE SET value = excluded.value, at = now()",
                   (int(parts[1]), float(body["value"])))
    return 200, {"ok": True}


serve({("PUT", "status"): put})
