"""accusr: the accounts service. GET /users/<id> reads PostgreSQL."""
import threading

from common import postgres, serve

pg, lock = postgres(), threading.Lock()
pg.execute("CREATE TABLE IF NOT EXISTS users (id int PRIMARY KEY, name text)")
pg.execute("INSERT INTO users SELECT i, 'user' || i FROM generate_series(1, 1000) i ON CONFLICT DO NOTHING")


def user(req, parts, body):
    with lock:
        row = pg.execute("SELECT id, name FROM users WHERE id = %s", (int(parts[1]),)).fetchone()
    return (200, {"id": row[0], "name": row[1]}) if row else (404, {"error": "no such user"})


serve({("GET", "users"): user})
