"""login: POST /login {"user": id} checks the account with accusr and loads
the user's workspaces from wfd."""
from common import Downstream, serve

accusr, wfd = Downstream("ACCUSR_URL"), Downstream("WFD_URL")


def login(req, parts, body):
    user = int(body["user"])
    status, account = accusr.call("GET", f"/users/{user}")
    if status != 200:
        return 401, {"error": "unknown user"}
    _, workspaces = wfd.call("GET", f"/workspaces/{user}")
    return 200, {"user": account["name"], "workspaces": workspaces, "token": f"t-{user}"}


serve({("POST", "login"): login})
