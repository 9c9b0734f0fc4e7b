"""The Ray backend (`launch.backend=ray`): each process spec becomes a detached Ray actor.

The actor runs the spec's command line as its child (which dies with it) and exits when the
child exits, so Ray's own actor restarts (`max_restarts`) bring a failed service back; kill -9
of the actor's process does the same. Placement is Ray's: the actor asks for
`num_cpus`, `num_gpus` (the worker's GPU count; Ray sets CUDA_VISIBLE_DEVICES) and a custom
resource named after the process's cluster node (`launch.ray.node_resource`), which pins it to
the Ray node that advertises it, so the node's `address` in the YAML
stays where the process listens. Status and stop go through Ray's state API and `ray.kill`,
logs through Ray's log API (the actor's stdout, which the service writes to).

Secrets never go in the runtime env (Ray's dashboard shows it): ORCHESTR_SECRET, ORCHESTR_API_KEYS
and ORCHESTR_WEB_AUTH become 0600 files next to the logs, passed as *_FILE variables.
`ProcessRecord.pid` holds the service's pid at start (Ray may restart it under another pid).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from orchestr.config.backends import RayBackendConfig
from orchestr.config.serving import NodeConfig
from orchestr.errors import LaunchError
from orchestr.launch.spec import ProcessRecord, ProcessSpec

SECRET_VARS = ("ORCHESTR_SECRET", "ORCHESTR_API_KEYS", "ORCHESTR_WEB_AUTH")
# what the launcher's environment lends the services (the Ray workers' own env is the raylet's)
FORWARD_PREFIXES = ("ORCHESTR_", "HF_", "TRANSFORMERS_", "OMP_", "XDG_", "PYTHONPATH", "TORCH")
LIVE = {"ALIVE", "RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY"}


class RayBackendError(LaunchError):
    pass


class ServiceActor:
    """Runs one service's command line; stdlib only (pickled by value into Ray's workers)."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: str | None) -> None:
        import ctypes
        import os
        import shlex
        import signal
        import subprocess
        import sys
        import threading

        libc = ctypes.CDLL("libc.so.6", use_errno=True)

        def die_with_actor() -> None:  # PR_SET_PDEATHSIG: no orphan keeps the port
            libc.prctl(1, signal.SIGKILL)

        self.stopping = False
        print(f"=== start: {shlex.join(argv)}", flush=True)
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=workdir or None,
                                     stdin=subprocess.DEVNULL, stdout=sys.stdout.fileno(),
                                     stderr=subprocess.STDOUT,  # one log, as the other backends
                                     preexec_fn=die_with_actor)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        import os

        rc = self.proc.wait()
        if not self.stopping:
            print(f"=== the service exited with {rc}; the actor exits so Ray restarts it", flush=True)
            os._exit(1)

    def info(self) -> dict:
        import ray

        return {"pid": self.proc.pid, "node_id": ray.get_runtime_context().get_node_id()}

    def shutdown(self, timeout: float) -> None:
        import subprocess

        self.stopping = True
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _options(node: NodeConfig) -> RayBackendConfig:
    return RayBackendConfig(**dict(getattr(node, "backend_options", None) or {}))


def secret_files(env: dict[str, str], folder: Path) -> dict[str, str]:
    """Move secret values of `env` into 0600 files under `folder`; the env keeps *_FILE paths."""
    out = dict(env)
    for var in SECRET_VARS:
        if var in out:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = folder / var.lower()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(out.pop(var))
            out[f"{var}_FILE"] = str(path)
    return out


def gpu_count(spec: ProcessSpec) -> int:
    return len([d for d in spec.env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()])


def max_restarts(spec: ProcessSpec, opts: RayBackendConfig) -> int:
    if opts.max_restarts is not None:
        return opts.max_restarts
    r = spec.restart
    return {"no": 0, "always": -1}.get(r.policy, r.max_restarts)


class RayRunner:
    scheduler_restarts = True  # the launcher starts no supervisor for this backend

    def __init__(self, node_name: str, node: NodeConfig) -> None:
        self.node_name = node_name
        self.node = node
        self.opts = _options(node)

    def _ray(self):
        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=self.opts.address, namespace=self.opts.namespace, log_to_driver=False,
                         logging_level="ERROR", configure_logging=False)
            except (ConnectionError, RuntimeError) as e:
                raise RayBackendError(f"launch.ray.address: cannot reach the Ray cluster at "
                                      f"{self.opts.address!r} ({e}); start one with scripts/setup_ray.sh "
                                      "or `ray start --head`") from e
        return ray

    def _actor_options(self, spec: ProcessSpec) -> dict:
        resources = {self.opts.node_resource.format(node=spec.node): 0.001, **self.opts.resources}
        opts = {"name": spec.name, "namespace": self.opts.namespace, "lifetime": "detached",
                "max_restarts": max_restarts(spec, self.opts), "num_cpus": self.opts.num_cpus,
                "num_gpus": gpu_count(spec), "resources": resources}
        if self.opts.runtime_env:
            opts["runtime_env"] = dict(self.opts.runtime_env)
        return opts

    def start(self, spec: ProcessSpec, log_path: str):

        ray = self._ray()
        import ray.cloudpickle as cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor runs this file's code
        log = Path(log_path).expanduser().resolve()
        forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_PREFIXES)}
        env = {**forwarded, **self.node.env, **spec.env, "PYTHONUNBUFFERED": "1"}
        if gpu_count(spec):
            env.pop("CUDA_VISIBLE_DEVICES")  # Ray grants the GPUs and sets it
        env = secret_files(env, log.parent / ".secrets")
        actor_cls = ray.remote(ServiceActor)
        actor = actor_cls.options(**self._actor_options(spec)).remote(list(spec.argv), env, spec.workdir)
        try:
            info = ray.get(actor.info.remote(), timeout=600)
        except ray.exceptions.GetTimeoutError as e:
            ray.kill(actor, no_restart=True)
            res = self.opts.node_resource.format(node=spec.node)
            raise RayBackendError(f"{spec.name}: Ray did not place it within 600 s; does a Ray node "
                                  f"advertise the resource {res!r} (launch.ray.node_resource) and have "
                                  f"{self.opts.num_cpus} CPU(s) / {gpu_count(spec)} GPU(s) free?") from e
        return ProcessRecord(spec=spec, pid=int(info["pid"]), pgid=0, log_path=f"ray actor {spec.name}")

    # ------------------------------------------------------------------ state API
    def actor_state(self, name: str) -> dict | None:
        """The live actor of this name in our namespace (Ray's state API), else the last dead one."""
        self._ray()
        from ray.util.state import list_actors

        actors = list_actors(filters=[("name", "=", name), ("ray_namespace", "=", self.opts.namespace)],
                             detail=True, raise_on_missing_output=False)
        live = [a for a in actors if a.state in LIVE]
        chosen = live or actors
        return chosen[0].__dict__ if chosen else None

    def alive(self, record) -> bool:
        a = self.actor_state(record.name)
        return a is not None and a["state"] in LIVE

    def describe(self, record) -> str:
        a = self.actor_state(record.name)
        if a is None:
            return "no ray actor"
        return f"ray actor {a['state']} pid {a.get('pid')} node {str(a.get('node_id'))[:12]}"

    def stop(self, record, timeout: float = 15.0) -> None:
        ray = self._ray()
        try:
            actor = ray.get_actor(record.name, namespace=self.opts.namespace)
        except ValueError:
            return  # no live actor of that name
        try:
            ray.get(actor.shutdown.remote(timeout), timeout=timeout + 10)
        except Exception:  # dead or hung: kill it anyway
            pass
        ray.kill(actor, no_restart=True)
        deadline = time.time() + timeout
        while self.alive(record) and time.time() < deadline:
            time.sleep(0.3)

    def read_log(self, record, lines: int = 100) -> str:
        a = self.actor_state(record.name)
        if a is None:
            return ""
        from ray.util.state import get_log

        try:
            return "".join(get_log(actor_id=a["actor_id"], tail=lines, suffix="out"))
        except Exception as e:  # the actor's node or log may be gone
            return f"(no log from Ray: {e})"

    def follow_log(self, record) -> Iterator[str]:
        a = self.actor_state(record.name)
        if a is None:
            return
        from ray.util.state import get_log

        for chunk in get_log(actor_id=a["actor_id"], tail=0, follow=True, suffix="out"):
            yield from chunk.splitlines()

    def close(self) -> None:
        pass

