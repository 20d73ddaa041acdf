"""emailpusher: POST /email queues a notification (here: counts it)."""
import itertools

from common import serve

sent = itertools.count(1)


def email(req, parts, body):
    return 202, {"queued": next(sent)}


serve({("POST", "email"): email})
