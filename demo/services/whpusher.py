"""whpusher: consumes `data` and pushes each reading to the time-series manager."""
from common import Downstream, consume

tsmanager = Downstream("TSMANAGER_URL")


def on_reading(ch, msg):
    tsmanager.call("POST", "/series", msg)


consume("data", on_reading)
