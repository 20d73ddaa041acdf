#!/usr/bin/env python3
"""Starts the demo system: PostgreSQL, Redis and RabbitMQ (Debian's servers,
throwaway data directories) and the twelve services of services/, either as
host processes or as Docker containers.

Usage: demo.py [--mode host|docker]

Prints one JSON line once everything is ready:
  {"mode": ..., "login": "127.0.0.1:port", "ingestion": ..., "gates": ...,
   "services": {name: pid}}
then runs until stdin closes (or SIGINT/SIGTERM/SIGHUP) and stops everything.
If it is killed outright, its children get a parent-death signal: the
infra scripts then stop their servers, the services exit.

In docker mode every service runs in its own container on the `sonde-demo`
network, from a FROM scratch image holding only services/; the Python
runtime is the host's, mounted read-only. The entry services are published
on 127.0.0.1 (through docker-proxy) and on the network's gateway address
(through iptables DNAT): "nat" in the JSON line. The other services are
reached by container IP.
"""
import argparse, json, os, signal, socket, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "infra"))
from lifetime import dies_with_parent, stop_on_signals  # noqa: E402
SERVICES = os.path.join(HERE, "services")
NETWORK, SUBNET, GATEWAY, IMAGE = "sonde-demo", "172.30.0.0/24", "172.30.0.1", "sonde-demo:dev"

# name -> (downstream URL variables, needs). Entry services are published.
HTTP = {
    "accusr": ([], ["PG"]),
    "wfd": ([], ["PG", "REDIS"]),
    "login": (["ACCUSR_URL", "WFD_URL"], []),
    "status": ([], ["PG"]),
    "tsmanager": ([], ["PG"]),
    "emailpusher": ([], []),
    "ingestion": ([], ["AMQP"]),
    "gates": ([], ["PG"]),
}
CONSUMERS = {
    "statusup": (["STATUS_URL"], ["AMQP"]),
    "condition": ([], ["AMQP"]),
    "whpusher": (["TSMANAGER_URL"], ["AMQP"]),
    "conditionworker": (["EMAILPUSHER_URL"], ["AMQP"]),
}
ENTRY = ["login", "ingestion", "gates"]


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(host, port, what, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {host}:{port}")


class Demo:
    def __init__(self, mode):
        self.mode = mode
        self.procs, self.containers = [], []

    def infra(self, script, *bind):
        # SIGTERM: the script stops its servers before it exits.
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "infra", script), *bind],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=dies_with_parent(signal.SIGTERM))
        self.procs.append(p)
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"{script} failed to start")
        return json.loads(line)

    def start(self):
        host = GATEWAY if self.mode == "docker" else "127.0.0.1"
        if self.mode == "docker":
            self.docker_setup()
        bind = ["127.0.0.1", GATEWAY] if self.mode == "docker" else []
        dbs = self.infra("db_servers.py", *bind)
        amqp = self.infra("rabbitmq_server.py", host)
        base_env = {"PG": f"{host}:{dbs['postgres']}", "REDIS": f"{host}:{dbs['redis']}", "AMQP": f"{host}:{amqp['amqp']}"}
        urls, entry, nat, pids = {}, {}, {}, {}
        # Downstream services first, so their callers find them serving.
        for name, (deps, _) in list(HTTP.items()) + list(CONSUMERS.items()):
            env = dict(base_env, **{d: urls[d] for d in deps})
            if self.mode == "host":
                port = free_port()
                pids[name] = self.host_service(name, dict(env, PORT=str(port), BIND="127.0.0.1"))
                urls[f"{name.upper()}_URL"] = f"http://127.0.0.1:{port}"
                entry[name] = f"127.0.0.1:{port}"
            else:
                ip = f"172.30.0.{10 + len(pids)}"
                published = (free_port(), free_port()) if name in ENTRY else None
                pids[name] = self.container(name, ip, dict(env, PORT="8080"), published)
                urls[f"{name.upper()}_URL"] = f"http://{ip}:8080"
                if published:
                    entry[name], nat[name] = f"127.0.0.1:{published[0]}", f"{GATEWAY}:{published[1]}"
        out = {"mode": self.mode, **{n: entry[n] for n in ENTRY}, "services": pids, "postgres": dbs["postgres"], "redis": dbs["redis"],
               "amqp": amqp["amqp"]}
        if self.mode == "docker":
            out["nat"] = nat
            out["containers"] = {n: f"sonde-demo-{n}" for n in pids}
        return out

    def host_service(self, name, env):
        p = subprocess.Popen([sys.executable, os.path.join(SERVICES, f"{name}.py")], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, OTEL_SERVICE_NAME=name, PYTHONDONTWRITEBYTECODE="1", **env),
                             preexec_fn=dies_with_parent())
        self.procs.append(p)
        if p.stdout.readline().strip() != "READY":
            raise SystemExit(f"{name} failed to start")
        return p.pid

    # --- docker mode -------------------------------------------------------
    def docker(self, *args, check=True):
        return subprocess.run(["docker", *args], check=check, capture_output=True, text=True)

    def docker_setup(self):
        if self.docker("info", check=False).returncode != 0:
            raise SystemExit("docker mode needs a running Docker engine (start dockerd, or use --mode host)")
        self.cleanup_docker()
        # An image with only the demo's code: the runtime is mounted from the host.
        built = subprocess.run(["docker", "build", "-q", "-t", IMAGE, "-f", "-", SERVICES], capture_output=True,
                               input="FROM scratch\nCOPY . /app\nWORKDIR /app\n", text=True)
        if built.returncode != 0:
            raise SystemExit(f"docker build of {IMAGE} failed:\n{built.stderr}")
        self.docker("network", "create", "--subnet", SUBNET, "--gateway", GATEWAY, NETWORK)

    def container(self, name, ip, env, published):
        cname = f"sonde-demo-{name}"
        args = ["run", "-d", "--name", cname, "--network", NETWORK, "--ip", ip, "-e", f"OTEL_SERVICE_NAME={name}",
                "-e", "PYTHONDONTWRITEBYTECODE=1", "-e", "PYTHONUNBUFFERED=1"]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        runtime = sys.base_prefix
        for path in ["/usr", "/lib", "/lib64", runtime]:
            if os.path.exists(path):
                args += ["-v", f"{path}:{path}:ro"]
        if published:
            args += ["-p", f"127.0.0.1:{published[0]}:8080", "-p", f"{GATEWAY}:{published[1]}:8080"]
        self.containers.append(cname)
        self.docker(*args, IMAGE, os.path.realpath(sys.executable), f"/app/{name}.py")
        end = time.time() + 60
        while "READY" not in self.docker("logs", cname, check=False).stdout:
            state = self.docker("inspect", "-f", "{{.State.Running}}", cname, check=False).stdout.strip()
            if state != "true" or time.time() > end:
                raise SystemExit(f"container {cname} failed to start:\n" + self.docker("logs", cname, check=False).stderr)
            time.sleep(0.2)
        if published:
            wait_port("127.0.0.1", published[0], cname)
        return int(self.docker("inspect", "-f", "{{.State.Pid}}", cname).stdout.strip())

    def cleanup_docker(self):
        names = self.docker("ps", "-aq", "--filter", "name=sonde-demo-", check=False).stdout.split()
        if names:
            self.docker("rm", "-f", *names, check=False)
        self.docker("network", "rm", NETWORK, check=False)

    def stop(self):
        if self.mode == "docker":
            self.cleanup_docker()
        for p in reversed(self.procs):
            if p.stdin:
                p.stdin.close()  # the infra scripts stop their servers
            else:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["host", "docker"], default="host")
    args = ap.parse_args()
    demo = Demo(args.mode)
    stop_on_signals()
    try:
        print(json.dumps(demo.start()), flush=True)
        sys.stdin.read()
    finally:
        demo.stop()


if __name__ == "__main__":
    main()
