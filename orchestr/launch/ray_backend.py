"""The Ray backend (`launch.backend=ray`): each process spec becomes a detached Ray actor.

The actor runs the spec's command line as its child (which dies with it) and exits when the
child exits, so Ray's own actor restarts (`max_restarts`) bring a failed service back; kill -9
of the actor's process does the same. Placement is Ray's: the actor asks for
`num_cpus`, `num_gpus` (the worker's GPU count; Ray sets CUDA_VISIBLE_DEVICES) and a custom
resource named after the process's cluster node (`launch.ray.node_resource`), which pins it to
the Ray node that advertises it, so the node's `address` in the YAML
stays where the process listens. Status and stop go through Ray's state API and `ray.kill`,
logs through Ray's log API (the actor's stdout, which the service writes to).

Secrets never go in the runtime env (Ray's dashboard shows it): the plan's secret files travel as
the actor's arguments and the actor writes them to 0600 files on its node, named by the same
*_FILE variables as on the other backends.
`ProcessRecord.pid` holds the service's pid at start (Ray may restart it under another pid).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from orchestr.config.backends import RayBackendConfig
from orchestr.config.serving import NodeConfig
from orchestr.errors import ConfigError, LaunchError
from orchestr.launch.spec import ProcessRecord, ProcessSpec

SECRET_VARS = ("ORCHESTR_SECRET", "ORCHESTR_API_KEYS", "ORCHESTR_WEB_AUTH")
# what the launcher's environment lends the services (the Ray workers' own env is the raylet's)
FORWARD_PREFIXES = ("ORCHESTR_", "HF_", "TRANSFORMERS_", "OMP_", "XDG_", "PYTHONPATH", "TORCH")
_INIT_LOCK = threading.Lock()
LIVE = {"ALIVE", "RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY"}
# resources every Ray node has: not the custom ones that pin a process to a node
_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")


class RayBackendError(LaunchError):
    pass


class ServiceActor:
    """Runs one service's command line; stdlib only (pickled by value into Ray's workers)."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: str | None,
                 files: dict[str, str], key: str) -> None:
        import ctypes
        import os
        import shlex
        import signal
        import subprocess
        import sys
        import tempfile
        import threading

        env = dict(env)
        self.secrets_dir = None
        if files:  # secrets: 0600 files in a 0700 folder on this node, named by *_FILE variables
            folder = os.path.join(tempfile.gettempdir(), f"orchestr-secrets-{key}")
            os.makedirs(folder, mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
            self.secrets_dir = folder  # one per actor: a restart rewrites it, shutdown removes it
            for var, text in files.items():
                path = os.path.join(folder, var.lower())
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                env[var] = path

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
        import shutil
        import subprocess

        self.stopping = True
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.secrets_dir:
            shutil.rmtree(self.secrets_dir, ignore_errors=True)


def _options(node: NodeConfig) -> RayBackendConfig:
    return RayBackendConfig(**node.backend_options)


def gpu_count(spec: ProcessSpec) -> int:
    return len([d for d in spec.env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()])


def actor_gpus(spec: ProcessSpec) -> int:
    """GPUs the actor holds. A tensor-parallel vLLM worker holds none: vLLM places its own Ray
    workers, one GPU each, on the same cluster (RAY_ADDRESS), and would wait forever for GPUs
    its own actor held."""
    n = gpu_count(spec)
    return 0 if spec.service == "vllm_worker" and n > 1 else n


def max_restarts(spec: ProcessSpec, opts: RayBackendConfig) -> int:
    if opts.max_restarts is not None:
        return opts.max_restarts
    r = spec.restart
    return {"no": 0, "always": -1}.get(r.policy, r.max_restarts)


class RayRunner:
    def __init__(self, node_name: str, node: NodeConfig) -> None:
        self.node_name = node_name
        self.node = node
        self.opts = _options(node)

    def _ray(self):
        """This process as a Ray driver (start and stop need one; the state API does not)."""
        import ray

        with _INIT_LOCK:  # status probes every node's runner from its own thread
            if ray.is_initialized():
                return ray
            try:
                ray.init(address=self.opts.address, namespace=self.opts.namespace, log_to_driver=False,
                         logging_level="ERROR", configure_logging=False)
            except (ConnectionError, RuntimeError) as e:
                raise RayBackendError(f"launch.ray.address: cannot reach the Ray cluster at "
                                      f"{self.opts.address!r} ({e}); start one with scripts/setup_ray.sh "
                                      "or `ray start --head`") from e
        return ray

    @classmethod
    def preflight(cls, nodes: dict[str, NodeConfig], specs: list[ProcessSpec]) -> None:
        """Can Ray place every actor (its node's custom resource, the CPUs and GPUs it asks for),
        and is no actor of the plan's names left in the namespace? Otherwise a ConfigError
        naming the key, before anything starts (Ray would keep such an actor pending forever)."""
        if not specs:
            return
        first = cls(specs[0].node, nodes[specs[0].node])
        ray = first._ray()
        alive = [n for n in ray.nodes() if n.get("Alive")]
        offered = sorted({r for n in alive for r in n.get("Resources", {})
                          if r not in _BUILTIN and not r.startswith(("node:", "accelerator_type:"))})
        names = ", ".join(repr(r) for r in offered) or "none"
        for spec in specs:
            runner = cls(spec.node, nodes[spec.node])
            opts = runner.opts
            res = opts.node_resource.format(node=spec.node)
            wanted = {res: 0.001, **opts.resources, "CPU": opts.num_cpus, "GPU": float(actor_gpus(spec))}
            for name, amount in wanted.items():
                if amount and not any(n.get("Resources", {}).get(name, 0) >= amount for n in alive):
                    if name == res:
                        raise ConfigError("launch.ray.node_resource",
                                          f"no Ray node offers resource {res!r} (for {spec.name} on node "
                                          f"{spec.node!r}); nodes offer {names}: use a cluster whose node "
                                          "keys are these (cluster=ray_local for scripts/setup_ray.sh's) "
                                          "or set launch.ray.node_resource")
                    key = {"CPU": "launch.ray.num_cpus", "GPU": f"{spec.key}.gpus"}.get(name, "launch.ray.resources")
                    most = max((n.get("Resources", {}).get(name, 0) for n in alive), default=0)
                    raise ConfigError(key, f"{spec.name} asks Ray for {amount:g} {name}; no node has that "
                                           f"many (the most a node offers: {most:g})")
            try:
                ray.get_actor(spec.name, namespace=opts.namespace)
            except ValueError:
                continue
            raise ConfigError("launch.ray.namespace",
                              f"an actor named {spec.name!r} is already in Ray namespace {opts.namespace!r} "
                              "(another deployment?): `orchestr stop` it, or set launch.ray.namespace")

    def _actor_options(self, spec: ProcessSpec) -> dict:
        resources = {self.opts.node_resource.format(node=spec.node): 0.001, **self.opts.resources}
        opts = {"name": spec.name, "namespace": self.opts.namespace, "lifetime": "detached",
                "max_restarts": max_restarts(spec, self.opts), "num_cpus": self.opts.num_cpus,
                "num_gpus": actor_gpus(spec), "resources": resources}
        if self.opts.runtime_env:
            opts["runtime_env"] = dict(self.opts.runtime_env)
        return opts

    def start(self, spec: ProcessSpec, log_path: str):

        ray = self._ray()
        import ray.cloudpickle as cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor runs this file's code
        forwarded = {k: v for k, v in os.environ.items()
                     if k.startswith(FORWARD_PREFIXES) and k.removesuffix("_FILE") not in SECRET_VARS}
        env = {**forwarded, **self.node.env, **spec.env, "PYTHONUNBUFFERED": "1"}
        if gpu_count(spec):
            env.pop("CUDA_VISIBLE_DEVICES")  # Ray grants the GPUs and sets it
        # the secret files' contents travel as actor arguments (not in the runtime env, which
        # Ray's dashboard shows) and the actor writes them to 0600 files on its node
        files = {var: Path(path).read_text() for var, path in spec.env_files.items()}
        actor_cls = ray.remote(ServiceActor)
        actor = actor_cls.options(**self._actor_options(spec)).remote(list(spec.argv), env, spec.workdir, files,
                                                                 f"{self.opts.namespace}-{spec.name}")
        try:
            info = ray.get(actor.info.remote(), timeout=600)
        except ray.exceptions.GetTimeoutError as e:
            ray.kill(actor, no_restart=True)
            res = self.opts.node_resource.format(node=spec.node)
            raise RayBackendError(f"{spec.name}: Ray did not place it within 600 s; does a Ray node "
                                  f"advertise the resource {res!r} (launch.ray.node_resource) and have "
                                  f"{self.opts.num_cpus} CPU(s) / {gpu_count(spec)} GPU(s) free?") from e
        except BaseException:  # interrupted or failed while placing: no named actor is left behind
            ray.kill(actor, no_restart=True)
            raise
        return ProcessRecord(spec=spec, pid=int(info["pid"]), pgid=0, log_path=f"ray actor {spec.name}")

    # ------------------------------------------------------------------ state API
    def _state_address(self) -> str | None:
        return None if self.opts.address == "auto" else self.opts.address

    def actor_state(self, name: str) -> dict | None:
        """The live actor of this name in our namespace (Ray's state API), else the last dead one."""
        from ray.util.state import list_actors

        try:
            actors = list_actors(address=self._state_address(), detail=True, raise_on_missing_output=False,
                                 filters=[("name", "=", name), ("ray_namespace", "=", self.opts.namespace)])
        except Exception as e:  # the state API raises its own kinds for an absent cluster
            raise RayBackendError(f"launch.ray.address: Ray's state API at {self.opts.address!r} "
                                  f"does not answer ({e})") from e
        live = [a for a in actors if a.state in LIVE]
        chosen = live or actors
        return chosen[0].__dict__ if chosen else None

    def alive(self, record) -> bool:
        a = self.actor_state(record.name)
        return a is not None and a["state"] in LIVE

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
            return "".join(get_log(address=self._state_address(), actor_id=a["actor_id"], tail=lines,
                                   suffix="out"))
        except Exception as e:  # the actor's node or log may be gone
            return f"(no log from Ray: {e})"

    def follow_log(self, record) -> Iterator[str]:
        a = self.actor_state(record.name)
        if a is None:
            return
        from ray.util.state import get_log

        for chunk in get_log(address=self._state_address(), actor_id=a["actor_id"], tail=0, follow=True,
                             suffix="out"):
            yield from chunk.splitlines()

    def remove_files(self, folder) -> None:
        pass  # each actor removes its own copies when it shuts down

    def close(self) -> None:
        pass

