"""gates: GET /gates/<id> reads the gate, its schedule and its permissions
from PostgreSQL (three queries per request)."""
import threading

from common import postgres, serve

pg, lock = postgres(), threading.Lock()
pg.execute("CREATE TABLE IF NOT EXISTS gates (id int PRIMARY KEY, name text)")
pg.execute("CREATE TABLE IF NOT EXISTS gate_schedules (gate int, opens time, closes time)")
pg.execute("CREATE TABLE IF NOT EXISTS gate_permissions (gate int, user_id int)")
pg.execute("INSERT INTO gates SELECT i, 'gate' || i FROM generate_series(1, 100) i ON CONFLICT DO NOTHING")


def gate(req, parts, body):
    gid = int(parts[1])
    with lock:
        row = pg.execute("SELECT id, name FROM gates WHERE id = %s", (gid,)).fetchone()
        schedule = pg.execute("SELECT opens::text, closes::text FROM gate_schedules WHERE gate = %s", (gid,)).fetchall()
        users = pg.execute("SELECT user_id FROM gate_permissions WHERE gate = %s", (gid,)).fetchall()
    if not row:
        return 404, {"error": "no such gate"}
    return 200, {"id": row[0], "name": row[1], "schedule": schedule, "users": [u[0] for u in users]}


serve({("GET", "gates"): gate})
