"""statusup: consumes `statusup`, records the device's status with the status
service, and asks the condition service to evaluate the reading."""
from common import Downstream, consume, publish

status = Downstream("STATUS_URL")


def on_reading(ch, msg):
    status.call("PUT", f"/status/{msg['device']}", {"value": msg["value"]})
    publish(ch, "condition", "evaluate", msg)


consume("statusup", on_reading)
