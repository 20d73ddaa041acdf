"""wfd: workspaces. GET /workspaces/<user> answers from Redis, and on a miss
reads PostgreSQL and fills the cache."""
import json, threading

from common import postgres, redis_client, serve

pg, cache, lock = postgres(), redis_client(), threading.Lock()
cache.ping()  # connect (and handshake) now, not inside the first request
pg.execute("CREATE TABLE IF NOT EXISTS workspaces (id serial PRIMARY KEY, owner int, name text)")


def workspaces(req, parts, body):
    owner = int(parts[1])
    key = f"ws:{owner}"
    with lock:
        hit = cache.get(key)
        if hit is not None:
            return 200, json.loads(hit)
        rows = pg.execute("SELECT id, name FROM workspaces WHERE owner = %s", (owner,)).fetchall()
        found = [{"id": r[0], "name": r[1]} for r in rows] or [{"id": 0, "name": "default"}]
        cache.set(key, json.dumps(found), ex=30)
    return 200, found


serve({("GET", "workspaces"): workspaces})
