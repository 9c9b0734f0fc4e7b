"""Runs process specs on another machine over SSH (paramiko).

Each remote process is started by a short POSIX `sh` script: `cd` to the node's workdir, then
`env ... setsid nohup ARGV >> LOG 2>&1 < /dev/null &`. `setsid` makes it the leader of its own
session and process group, so it survives the SSH connection and `stop` can end the whole group
(the service and anything it forked). Logs stay on the node; `read_log`/`follow_log` fetch them.

Every value that reaches the remote shell goes through `shlex.quote` (or `_qpath` for paths
that may start with `~`), so a model name like `x; rm -rf ~` arrives as one literal argument.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko

from orchestr.config.serving import NodeConfig
from orchestr.errors import NodeError as SSHError
from orchestr.errors import UserError
from orchestr.launch.spec import ProcessRecord, ProcessSpec

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _qpath(path: str) -> str:
    """Quote a remote path, keeping a leading `~` meaning the remote user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _remote_secrets(folder: Path) -> str:
    """The node's folder for one deployment's secret files, named after the deployment's secrets
    folder here (its name and a hash of its path)."""
    here = folder.expanduser()
    return f"~/.cache/orchestr/secrets/{here.name}-{hashlib.sha1(str(here).encode()).hexdigest()[:8]}"


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            return s.connect_ex((host, port)) == 0
        except OSError:  # unresolvable here: leave it to the health checks
            return False


class _AcceptWithoutSaving(paramiko.MissingHostKeyPolicy):
    """known_hosts=ignore: trust whatever key the server shows, remember nothing."""

    def missing_host_key(self, client, hostname, key) -> None:  # noqa: D401 - paramiko hook
        return None


def connect(node_name: str, node: NodeConfig, timeout: float = 15.0) -> paramiko.SSHClient:
    """An authenticated client for the node, with its known-hosts policy applied."""
    key = f"cluster.nodes.{node_name}"
    host = node.ssh_host or node.address
    client = paramiko.SSHClient()
    policy = node.known_hosts
    known_file = Path(node.known_hosts_file).expanduser() if node.known_hosts_file else None
    if policy == "strict":
        # only keys already known (system file and the configured one); unknown hosts are refused
        client.load_system_host_keys()
        if known_file is not None:
            if not known_file.is_file():
                raise SSHError(f"{key}.known_hosts_file: {known_file} does not exist")
            client.load_host_keys(str(known_file))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    elif policy == "accept-new":
        # like OpenSSH's StrictHostKeyChecking=accept-new: learn unknown hosts (saved to the
        # file), still refuse a known host whose key changed
        target = known_file or Path("~/.ssh/known_hosts").expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
        client.load_system_host_keys()
        client.load_host_keys(str(target))  # AutoAddPolicy saves new keys to this file
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    elif policy == "ignore":
        client.set_missing_host_key_policy(_AcceptWithoutSaving())
    else:
        raise SSHError(f"{key}.known_hosts: unknown policy {policy!r} (strict | accept-new | ignore)")
    who = f"{node.user + '@' if node.user else ''}{host}:{node.ssh_port}"
    try:
        client.connect(
            hostname=host, port=node.ssh_port, username=node.user,
            key_filename=str(Path(node.key_file).expanduser()) if node.key_file else None,
            allow_agent=node.use_agent,
            look_for_keys=node.key_file is None,  # an explicit key means: only that key
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException as e:
        client.close()
        raise SSHError(f"{key}: host key of {who} does not match the known one ({e}); "
                       "check the host, or fix the known_hosts entry") from None
    except paramiko.SSHException as e:
        client.close()
        raise SSHError(f"{key}: cannot connect to {who}: {e}{_connect_hint(key, node, host, e)}") from None
    except (TimeoutError, OSError) as e:
        client.close()
        raise SSHError(f"{key}: cannot connect to {who}: {e}") from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(30)
    return client


def _connect_hint(key: str, node: NodeConfig, host: str, e: Exception) -> str:
    """What to change when a connection is refused: the keys at fault and a next step."""
    text = str(e)
    if "not found in known_hosts" in text:
        target = node.known_hosts_file or "~/.ssh/known_hosts"
        return (f"; add its key (`ssh-keyscan -p {node.ssh_port} {host} >> {target}`), point "
                f"{key}.known_hosts_file at a file that has it, or set {key}.known_hosts=accept-new")
    if isinstance(e, paramiko.AuthenticationException) or "authentication methods" in text.lower():
        user = node.user or "(your local user name)"
        if node.key_file:
            tried = f"key {key}.key_file={node.key_file}"
        else:
            tried = "the SSH agent and ~/.ssh/id_*" if node.use_agent else "~/.ssh/id_* (agent off)"
        return (f"; logged in as user {user} ({key}.user) with {tried}: set {key}.user and "
                f"{key}.key_file to a key the node accepts (its ~/.ssh/authorized_keys)")
    return ""


class SSHRunner:
    def __init__(self, node_name: str, node: NodeConfig, timeout: float = 15.0) -> None:
        self.node_name = node_name
        self.node = node
        self.timeout = timeout
        self.client = connect(node_name, node, timeout)

    @classmethod
    def preflight(cls, nodes: dict[str, NodeConfig], specs: list[ProcessSpec]) -> None:
        """Every node that runs a process answers and accepts its key (all at once)."""
        from concurrent.futures import ThreadPoolExecutor

        used = sorted({s.node for s in specs})

        def reach(name: str) -> None:
            connect(name, nodes[name], timeout=15.0).close()

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(used)))) as pool:
            for f in [pool.submit(reach, n) for n in used]:
                try:
                    f.result()
                except SSHError as e:  # names cluster.nodes.<name> and what to change
                    raise UserError(str(e)) from None

    # ------------------------------------------------------------------ remote exec
    def _exec(self, script: str, timeout: float) -> paramiko.ChannelFile:
        """Open a channel running the script; reconnects once when the link has dropped (a
        detached supervisor holds its connection for days)."""
        command = f"sh -c {shlex.quote(script)}"
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            self.client.close()
            self.client = connect(self.node_name, self.node, self.timeout)
        try:
            return self.client.exec_command(command, timeout=timeout)
        except (paramiko.SSHException, EOFError):
            self.client.close()
            self.client = connect(self.node_name, self.node, self.timeout)
            return self.client.exec_command(command, timeout=timeout)

    def run(self, script: str, timeout: float = 60.0, stdin: bytes | None = None) -> tuple[int, str, str]:
        """Run a POSIX sh script on the node (whatever the login shell is); rc, stdout, stderr.
        `stdin` feeds the script's standard input (how secrets travel: never in the script)."""
        try:
            inp, out, err = self._exec(script, timeout)
            if stdin is not None:
                inp.write(stdin)
                inp.channel.shutdown_write()
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            rc = out.channel.recv_exit_status()
        except (TimeoutError, paramiko.SSHException, OSError) as e:
            raise SSHError(f"cluster.nodes.{self.node_name}: remote command failed: {e}") from None
        return rc, stdout, stderr

    def place_files(self, spec: ProcessSpec) -> dict[str, str]:
        """Copy the spec's secret files to the node over this SSH connection: each is written
        from the channel's stdin (never the command line) as a 0600 file in a 0700 folder under
        ~/.cache/orchestr/secrets. Returns variable -> path on the node."""
        placed = {}
        for var, local in spec.env_files.items():
            folder = _remote_secrets(Path(local).parent)
            remote = f"{folder}/{Path(local).name}"
            script = (f"umask 077 && mkdir -p {_qpath(folder)} && chmod 700 {_qpath(folder)} && "
                      f"cat > {_qpath(remote)}.tmp && mv -f {_qpath(remote)}.tmp {_qpath(remote)} && "
                      f"cd {_qpath(folder)} && pwd")
            rc, out, err = self.run(script, timeout=self.timeout, stdin=Path(local).expanduser().read_bytes())
            if rc != 0 or not out.strip():
                raise SSHError(f"cluster.nodes.{self.node_name}: cannot copy {var} to the node: {err.strip()}")
            placed[var] = f"{out.strip().splitlines()[-1]}/{Path(local).name}"
        return placed

    def fetch_files(self, folder: str, pattern: str, into: Path) -> int:
        """Copy the node's `folder/pattern` files into `into` (one tar stream over this
        connection); how many came. A missing folder is no files."""
        import io
        import tarfile

        script = (f"cd {_qpath(folder)} 2>/dev/null || exit 0; set -- {pattern}; "
                  '[ -e "$1" ] || exit 0; tar -cf - -- "$@"')
        try:
            _, out, err = self._exec(script, max(self.timeout, 120.0))
            data = out.read()
            rc = out.channel.recv_exit_status()
        except (TimeoutError, paramiko.SSHException, OSError) as e:
            raise SSHError(f"cluster.nodes.{self.node_name}: cannot read {folder}: {e}") from None
        if rc != 0:
            raise SSHError(f"cluster.nodes.{self.node_name}: cannot read {folder}: "
                           f"{err.read().decode(errors='replace').strip()}")
        if not data:
            return 0
        into.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and "/" not in m.name]
            tar.extractall(into, members=members, filter="data")
        return len(members)

    def remove_files(self, folder: Path) -> None:
        """Delete the node's copies of the deployment's secret files (``place_files``)."""
        remote = _remote_secrets(folder)
        rc, _, err = self.run(f"rm -rf {_qpath(remote)}", timeout=self.timeout)
        if rc != 0:
            raise SSHError(f"cluster.nodes.{self.node_name}: cannot delete {remote}: {err.strip()}")

    def _env(self, spec: ProcessSpec) -> list[str]:
        env = {**self.node.env, **spec.env, **self.place_files(spec), "PYTHONUNBUFFERED": "1"}
        for k in env:
            if not _ENV_NAME.match(k):
                raise SSHError(f"cluster.nodes.{self.node_name}.env: {k!r} is not a valid variable name")
        words = [shlex.quote(f"{k}={v}") for k, v in env.items()]
        # a venv's interpreter (the worker's own, else the node's): put its bin/ first on PATH,
        # as `activate` would, so tools it runs (`ray` ...) come from the same venv
        python = spec.argv[0] if "/" in spec.argv[0] else self.node.python
        if python and "/" in python:
            words.insert(0, f'PATH={_qpath(str(Path(python).parent))}:"$PATH"')
        return words

    # ------------------------------------------------------------------ Runner protocol
    def start(self, spec: ProcessSpec, log_path: str) -> ProcessRecord:
        if spec.port and _port_open(self.node.address, spec.port):
            # a stale service there would answer the health checks in place of the new one
            raise SSHError(f"{spec.key or spec.name}.port: port {spec.port} on node {self.node_name!r} "
                           f"({self.node.address}) is already in use (another deployment? "
                           "`orchestr status` / `orchestr stop`, or pick another port)")
        log_dir = str(Path(log_path).parent)
        argv = [_qpath(spec.argv[0]), *(shlex.quote(a) for a in spec.argv[1:])]
        workdir = spec.workdir or self.node.workdir
        script = "\n".join([
            f"cd {_qpath(workdir)} || exit 97" if workdir else "cd || exit 97",
            f"mkdir -p {_qpath(log_dir)} || exit 98",
            f"printf '\\n=== %s start: %s\\n' \"$(date '+%Y-%m-%d %H:%M:%S')\" "
            f"{shlex.quote(spec.command_line())} >> {_qpath(log_path)} || exit 98",
            # backgrounded from a non-interactive shell, the child is no group leader, so
            # setsid(1) calls setsid() in place (no fork) and $! is the service's pid and pgid
            f"env {' '.join(self._env(spec))} setsid nohup {' '.join(argv)} "
            f">> {_qpath(log_path)} 2>&1 < /dev/null &",
            "pid=$!",
            "i=0",
            'while [ $i -lt 50 ]; do g=$(ps -o pgid= -p $pid 2>/dev/null | tr -d " ");'
            ' [ -z "$g" ] || [ "$g" = "$pid" ] && break; sleep 0.1; i=$((i+1)); done',
            'echo "$pid ${g:-$pid} $(pwd)"',
        ])
        rc, out, err = self.run(script)
        if rc == 97:
            raise SSHError(f"cluster.nodes.{self.node_name}.workdir: cannot cd to {workdir!r} on the node: {err.strip()}")
        if rc != 0:
            raise SSHError(f"cluster.nodes.{self.node_name}: could not start {spec.name} "
                           f"(rc {rc}, log {log_path}): {err.strip()}")
        try:
            pid_s, pgid_s, cwd = out.strip().splitlines()[-1].split(" ", 2)
            pid, pgid = int(pid_s), int(pgid_s)
        except ValueError:
            raise SSHError(f"cluster.nodes.{self.node_name}: unexpected answer starting {spec.name}: {out!r}") from None
        if not log_path.startswith(("/", "~")):  # record where it really is, for logs/restarts
            log_path = f"{cwd}/{log_path}"
        return ProcessRecord(spec=spec, pid=pid, pgid=pgid, log_path=log_path)

    def alive(self, record: ProcessRecord) -> bool:
        rc, _, _ = self.run(f's=$(ps -o stat= -p {int(record.pid)}) || exit 1\n'
                            'case "$s" in *Z*) exit 1;; esac\nexit 0', timeout=self.timeout)
        return rc == 0

    def group_members(self, pgid: int) -> list[int]:
        """Live (non-zombie) pids of a process group on the node."""
        _, out, _ = self.run(f"ps -eo pid=,pgid=,stat= | awk '$2=={int(pgid)} && $3 !~ /Z/ {{print $1}}'",
                             timeout=self.timeout)
        return [int(x) for x in out.split()]

    def stop(self, record: ProcessRecord, timeout: float = 15.0) -> None:
        pid, pgid = int(record.pid), int(record.pgid)
        tries = max(1, int(timeout / 0.2))
        # TERM the group (and the pid, should it have left it), wait, then KILL what is left
        script = f"""
members() {{ ps -eo pgid=,pid=,stat= | awk '($1=={pgid} || $2=={pid}) && $3 !~ /Z/' | wc -l; }}
# `kill -SIG -PGID`, not `kill -SIG -- -PGID`: dash's builtin does not take `--`
kill -TERM -{pgid} 2>/dev/null; kill -TERM {pid} 2>/dev/null
i=0
while [ $i -lt {tries} ]; do [ "$(members)" -eq 0 ] && exit 0; sleep 0.2; i=$((i+1)); done
kill -KILL -{pgid} 2>/dev/null; kill -KILL {pid} 2>/dev/null
i=0
while [ $i -lt 25 ]; do [ "$(members)" -eq 0 ] && exit 0; sleep 0.2; i=$((i+1)); done
ps -eo pgid=,pid=,stat=,cmd= | awk '($1=={pgid} || $2=={pid})' >&2
exit 3
"""
        rc, _, err = self.run(script, timeout=timeout + 30)
        if rc != 0:
            raise SSHError(f"cluster.nodes.{self.node_name}: process group {pgid} of {record.name} "
                           f"survived SIGKILL: {err.strip()}")

    def read_log(self, record: ProcessRecord, lines: int = 100) -> str:
        _, out, _ = self.run(f"tail -n {int(lines)} {_qpath(record.log_path)} 2>/dev/null",
                             timeout=self.timeout)
        return out.rstrip("\n")

    def follow_log(self, record: ProcessRecord, interval: float = 0.5) -> Iterator[str]:
        # polled by byte offset rather than a remote `tail -F`, which would outlive a dropped link
        q = _qpath(record.log_path)
        _, out, _ = self.run(f"stat -c %s {q} 2>/dev/null || echo 0", timeout=self.timeout)
        offset = int(out.split()[0]) if out.split() else 0
        pending = b""
        while True:
            script = (f"s=$(stat -c %s {q} 2>/dev/null || echo 0); echo $s; "
                      f"[ $s -gt {offset} ] && tail -c +{offset + 1} {q} | head -c $(($s-{offset}))")
            try:
                _, o, _ = self._exec(script, self.timeout)
                data = o.read()
            except (TimeoutError, paramiko.SSHException, OSError) as e:
                raise SSHError(f"cluster.nodes.{self.node_name}: lost the log of {record.name}: {e}") from None
            head, _, body = data.partition(b"\n")
            size = int(head or b"0")
            if size < offset:  # truncated or replaced: start over
                offset, pending = 0, b""
                continue
            offset += len(body)
            pending += body
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
            if not body:
                time.sleep(interval)

    def close(self) -> None:
        self.client.close()
