"""conditionworker: consumes `condition` and asks emailpusher to notify the
device's owner."""
from common import Downstream, consume

emailpusher = Downstream("EMAILPUSHER_URL")


def on_condition(ch, msg):
    emailpusher.call("POST", "/email", {"device": msg["device"], "alert": msg["alert"]})


consume("condition", on_condition)
