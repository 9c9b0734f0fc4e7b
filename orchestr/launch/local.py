"""Runs process specs as child processes of this machine, each in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from orchestr.config.serving import NodeConfig
from orchestr.launch.spec import ProcessRecord, ProcessSpec


class LocalLogs:
    """Logs that are files on this machine (the local runner's, or a shared filesystem's)."""

    def read_log(self, record: ProcessRecord, lines: int = 100) -> str:
        try:
            text = Path(record.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def follow_log(self, record: ProcessRecord) -> Iterator[str]:
        with open(record.log_path, errors="replace") as f:
            f.seek(0, os.SEEK_END)
            while True:
                line = f.readline()
                if line:
                    yield line.rstrip("\n")
                else:
                    time.sleep(0.3)

    def remove_files(self, folder: Path) -> None:
        pass  # processes read the files where they are: nothing was copied

    def close(self) -> None:
        pass


class LocalRunner(LocalLogs):
    def __init__(self, node_name: str, node: NodeConfig) -> None:
        self.node_name = node_name
        self.node = node

    def start(self, spec: ProcessSpec, log_path: str) -> ProcessRecord:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.node.env, **spec.env, **spec.env_files, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {spec.command_line()}\n".encode())
            log.flush()
            # A new session makes the process a group leader: stopping kills the whole group,
            # and a detached deployment survives the launcher's exit and terminal hang-ups.
            proc = subprocess.Popen(spec.argv, env=env, cwd=spec.workdir or None, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        return ProcessRecord(spec=spec, pid=proc.pid, pgid=proc.pid, log_path=str(log_path))

    def alive(self, record: ProcessRecord) -> bool:
        try:
            p = psutil.Process(record.pid)
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def _group_members(self, pgid: int) -> list[psutil.Process]:
        members = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == pgid:
                    members.append(p)
            except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
                continue
        return members

    def stop(self, record: ProcessRecord, timeout: float = 15.0) -> None:
        try:
            os.killpg(record.pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._reap(record.pid)
            if not [p for p in self._group_members(record.pgid) if p.status() != psutil.STATUS_ZOMBIE]:
                return
            time.sleep(0.2)
        try:
            os.killpg(record.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(record.pid)

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
