"""ingestion: POST /data {"device": id, "value": x} publishes the reading to
the `devices` exchange for the status pipeline."""
import threading

from common import amqp_channel, publish, serve

ch, lock = amqp_channel(), threading.Lock()


def data(req, parts, body):
    with lock:
        publish(ch, "devices", "status", {"device": int(body["device"]), "value": body["value"]})
    return 202, {"accepted": True}


serve({("POST", "data"): data})
