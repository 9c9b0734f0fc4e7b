"""The Slurm backend (`launch.backend=slurm`): each process spec becomes one `sbatch` job.

Slurm places, restarts and stops; orchestr only submits, waits on readiness as for any backend,
and reads state from `squeue`/`sacct`:

- the job's batch script resolves the addresses at run time through the scheduler: the
  controller's from the node its job runs on (`squeue` by job name, then the node's `NodeAddr`),
  the process's own from `$SLURMD_NODENAME`, so no host is hard-coded;
- a worker's GPUs become `--gres=gpu:N` (Slurm sets CUDA_VISIBLE_DEVICES for what it grants);
- a service that exits with an error puts its own job back in the queue (`scontrol requeue`,
  Slurm's requeue; `SLURM_RESTART_COUNT` counts against `restart.max_restarts`), so nothing
  else watches it;
- the environment (the service secret, API keys) travels through `sbatch`'s exported
  environment, never its command line;
- logs are the jobs' output files (`--output`, appended across requeues), `stop` is `scancel`.

`ProcessRecord.pid` holds the Slurm job id.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from orchestr.config.backends import SlurmConfig
from orchestr.config.serving import NodeConfig
from orchestr.errors import ConfigError, LaunchError
from orchestr.launch.local import LocalLogs
from orchestr.launch.spec import ProcessRecord, ProcessSpec

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
          "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}
LOCAL_BINDS = ("0.0.0.0", "::", "127.0.0.1", "localhost", "::1")


class SlurmError(LaunchError):
    pass


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 30.0) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError as e:
        raise SlurmError(f"{argv[0]} not found: is Slurm installed here? (scripts/setup_slurm.sh)") from e
    if out.returncode != 0:
        raise SlurmError(f"{shlex.join(argv)} failed: {(out.stderr or out.stdout).strip()}")
    return out.stdout


def _options(node: NodeConfig) -> SlurmConfig:
    return SlurmConfig(**node.backend_options)


def job_name(opts: SlurmConfig, process: str) -> str:
    return f"{opts.job_name_prefix}-{process}"


def job_state(job_id: str) -> tuple[str, str]:
    """(state, node list) of a job from squeue, falling back to sacct for jobs squeue forgot;
    ("UNKNOWN", "") when neither knows it."""
    try:
        out = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%N"]).strip()
        if out:
            state, nodes = out.splitlines()[0].split("|", 1)
            return state, nodes
    except SlurmError:
        pass  # squeue answers "Invalid job id" once a job has left its memory
    try:
        out = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,NodeList"]).strip()
        if out:
            state, nodes = out.splitlines()[0].split("|", 1)
            return state.split()[0], nodes
    except SlurmError:
        pass  # no accounting storage configured
    return "UNKNOWN", ""


def restart_count(job_id: str) -> int:
    try:
        m = re.search(r"\bRestarts=(\d+)", _run(["scontrol", "show", "job", "-o", job_id]))
    except SlurmError:
        return 0
    return int(m.group(1)) if m else 0


def node_address(slurm_node: str) -> str:
    out = _run(["scontrol", "show", "node", "-o", slurm_node])
    m = re.search(r"\bNodeAddr=(\S+)", out)
    return m.group(1) if m else slurm_node


# The batch script: resolve addresses through the scheduler, run the service, requeue on failure.
SCRIPT = """#!/bin/bash
# orchestr process {name} (written by `orchestr launch launch.backend=slurm`)
trap 'exit 143' TERM INT  # scancel: stop, never requeue
addr_of() {{ scontrol show node -o "$1" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p'; }}
SELF_ADDR=$(addr_of "$SLURMD_NODENAME")
{controller_lookup}
echo "=== $(date '+%F %T') slurm job $SLURM_JOB_ID on $SLURMD_NODENAME ($SELF_ADDR), restart ${{SLURM_RESTART_COUNT:-0}}"
{cd}{command}
rc=$?
echo "=== $(date '+%F %T') exited with $rc"
if [ "$rc" -ne 0 ] && {may_restart}; then
  echo "=== requeue (restart $(( ${{SLURM_RESTART_COUNT:-0}} + 1 )))"
  scontrol requeue "$SLURM_JOB_ID"
  sleep 300  # the requeue ends this run
fi
exit $rc
"""

CONTROLLER_LOOKUP = """for _ in $(seq 600); do
  CONTROLLER_NODE=$(squeue -h --me -n {job} -t RUNNING -o %N | head -n 1)
  [ -n "$CONTROLLER_NODE" ] && break
  sleep 1
done
CONTROLLER_ADDR=$(addr_of "$CONTROLLER_NODE")"""


def _url_to_shell(url: str, var: str) -> str:
    """http://host:port/x -> "http://${VAR}:port/x" (double-quoted, expanded by the job)."""
    u = urlsplit(url)
    rest = urlunsplit(("", "", u.path, u.query, u.fragment))
    return f'"{u.scheme}://${{{var}}}:{u.port}{rest}"'


def render_script(spec: ProcessSpec, opts: SlurmConfig) -> str:
    words = []
    flag = None
    for arg in spec.argv:
        if flag == "--controller-address" and spec.service != "controller":
            words.append(_url_to_shell(arg, "CONTROLLER_ADDR"))
        elif flag == "--worker-address":
            words.append(_url_to_shell(arg, "SELF_ADDR"))
        elif flag == "--host" and arg not in LOCAL_BINDS:  # the YAML node's address: the job's node's
            words.append('"${SELF_ADDR}"')
        else:
            words.append(shlex.quote(arg))
        flag = arg
    needs_controller = "--controller-address" in spec.argv and spec.service != "controller"
    lookup = CONTROLLER_LOOKUP.format(job=shlex.quote(job_name(opts, "controller"))) if needs_controller else ""
    r = spec.restart
    if r.policy == "always":
        may_restart = "true"
    elif r.policy == "no":
        may_restart = "false"
    else:
        may_restart = f'[ "${{SLURM_RESTART_COUNT:-0}}" -lt {int(r.max_restarts)} ]'
    cd = f"cd {shlex.quote(spec.workdir)} && " if spec.workdir else ""
    return SCRIPT.format(name=spec.name, controller_lookup=lookup, cd=cd, command=" ".join(words),
                         may_restart=may_restart)


def gpu_count(spec: ProcessSpec) -> int:
    devices = spec.env.get("CUDA_VISIBLE_DEVICES", "")
    return len([d for d in devices.split(",") if d.strip()])


def sbatch_argv(spec: ProcessSpec, opts: SlurmConfig, node_name: str, log_path: str, script: str) -> list[str]:
    argv = ["sbatch", "--parsable", "--job-name", job_name(opts, spec.name), "--output", log_path,
            "--open-mode=append", "--ntasks=1", "--export=ALL"]
    argv.append("--no-requeue" if spec.restart.policy == "no" else "--requeue")
    for flag, value in (("--partition", opts.partition), ("--account", opts.account),
                        ("--qos", opts.qos), ("--time", opts.time_limit),
                        ("--cpus-per-task", opts.cpus_per_task), ("--mem", opts.mem),
                        ("--nodelist", opts.nodelist.get(node_name))):
        if value not in (None, ""):
            argv += [flag, str(value)]
    if n := gpu_count(spec):
        argv.append(f"--gres={opts.gres.format(n=n)}")
    return [*argv, *opts.extra_args, script]


class SlurmRunner(LocalLogs):  # logs are files on the shared filesystem
    """A Runner whose processes are Slurm jobs (one runner per cluster node, as for the others)."""

    def __init__(self, node_name: str, node: NodeConfig) -> None:
        self.node_name = node_name
        self.node = node
        self.opts = _options(node)
        self._submitted: set[int] = set()  # jobs this runner started (in this launcher)

    def start(self, spec: ProcessSpec, log_path: str):
        log = Path(log_path).expanduser().resolve()
        log.parent.mkdir(parents=True, exist_ok=True)
        script_path = log.with_suffix(".sbatch")
        script_path.write_text(render_script(spec, self.opts))
        # values travel in sbatch's environment (--export=ALL); Slurm grants the GPUs itself
        # (secret files by path: Slurm's nodes share this filesystem)
        env = {**os.environ, **self.node.env, **spec.env, **spec.env_files, "PYTHONUNBUFFERED": "1"}
        if gpu_count(spec):
            env.pop("CUDA_VISIBLE_DEVICES", None)
        job_id = _run(sbatch_argv(spec, self.opts, self.node_name, str(log), str(script_path)),
                      env=env).strip().split(";")[0]
        rec = ProcessRecord(spec=spec, pid=int(job_id), pgid=0, log_path=str(log))
        self._submitted.add(rec.pid)
        try:
            self._await_placement(rec)
        except BaseException:  # timed out, failed or interrupted: the job must not stay queued
            try:
                _run(["scancel", str(rec.pid)])
            except SlurmError:
                pass
            raise
        return rec

    @classmethod
    def preflight(cls, nodes: dict[str, NodeConfig], specs: list[ProcessSpec]) -> None:
        """The partition, the nodelist's nodes and the GPU gres exist (before any sbatch)."""
        if not specs:
            return
        opts = _options(next(iter(nodes.values())))
        rows = [line.split("|") for line in _run(["sinfo", "-h", "-N", "-o", "%N|%R|%G"]).split()]
        partitions = sorted({r[1] for r in rows if len(r) == 3})
        slurm_nodes = sorted({r[0] for r in rows if len(r) == 3})
        if opts.partition and opts.partition not in partitions:
            raise ConfigError("launch.slurm.partition", f"Slurm has no partition {opts.partition!r}; "
                                                        f"it has {', '.join(partitions) or 'none'}")
        for key, slurm_node in opts.nodelist.items():
            for one in slurm_node.split(","):
                if one and one not in slurm_nodes:
                    raise ConfigError(f"launch.slurm.nodelist.{key}",
                                      f"Slurm has no node {one!r}; it has {', '.join(slurm_nodes) or 'none'}")
        gres = {r[2] for r in rows if len(r) == 3 and (not opts.partition or r[1] == opts.partition)}
        for spec in specs:
            if gpu_count(spec) and not any("gpu" in g for g in gres):
                raise ConfigError(f"{spec.key}.gpus", f"{spec.name} asks for {opts.gres.format(n=gpu_count(spec))} "
                                                      f"(launch.slurm.gres) but no Slurm node offers GPUs "
                                                      f"(gres: {', '.join(sorted(gres)) or 'none'})")

    def _await_placement(self, rec) -> None:
        """Wait until Slurm runs the job, then point the health check at the node it got."""
        deadline = time.time() + self.opts.submit_timeout_s
        while True:
            state, nodes = job_state(str(rec.pid))
            if state == "RUNNING" and nodes:
                break
            if state not in ACTIVE:
                raise SlurmError(f"slurm job {rec.pid} ({rec.name}) ended as {state} before running; "
                                 f"log: {rec.log_path}")
            if time.time() > deadline:
                raise SlurmError(f"slurm job {rec.pid} ({rec.name}) still {state} after "
                                 f"{self.opts.submit_timeout_s:.0f}s (launch.slurm.submit_timeout_s)")
            time.sleep(0.5)
        if rec.spec.health_url:
            u = urlsplit(rec.spec.health_url)
            host = node_address(nodes.split(",")[0])
            rec.spec.health_url = urlunsplit((u.scheme, f"{host}:{u.port}", u.path, u.query, u.fragment))

    def alive(self, record) -> bool:
        if job_state(str(record.pid))[0] not in ACTIVE:
            return False
        # while the launcher waits on it, a job that already requeued itself failed at start-up:
        # report it (with its log) instead of waiting out launch.health_timeout_s
        return record.pid not in self._submitted or restart_count(str(record.pid)) == 0

    def stop(self, record, timeout: float = 15.0) -> None:
        job = str(record.pid)

        def queued() -> bool:  # pending (a requeued job too) or running
            return job_state(job)[0] in ACTIVE

        if not queued():
            return
        _run(["scancel", job])
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not queued():
                return
            time.sleep(0.3)
        _run(["scancel", "--signal=KILL", "--full", job])
        deadline = time.time() + 30
        while queued() and time.time() < deadline:
            time.sleep(0.3)
