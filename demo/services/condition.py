"""condition: consumes `condition.evaluate` and hands every reading to the
`gatescheduler` exchange, which fans it out to the `data` and `condition` queues."""
from common import consume, publish


def on_reading(ch, msg):
    publish(ch, "gatescheduler", "", dict(msg, alert=msg["value"] > 50))


consume("condition.evaluate", on_reading)
