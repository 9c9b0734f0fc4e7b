"""A real, throwaway OpenSSH server on loopback for the SSH tests.

Own host key, own config, key authentication only, a free port, `sshd -D` in the background;
`AuthorizedKeysFile` points into the temp dir (one file per user: `keys/%u`), so the machine's
own SSH setup is never touched. `scripts/setup_sshd.sh` installs the Debian package.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
SANDBOX_USER = "orchestr-sshtest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orchestr-test", "-f", str(path)],
                   check=True)
    return Path(f"{path}.pub").read_text().strip()


@dataclass
class SSHServer:
    root: Path
    port: int
    proc: subprocess.Popen
    user: str  # who the tests log in as (the current user)
    key_file: Path  # authorised private key
    other_key_file: Path  # a key the server does not know
    known_hosts: Path  # holds the server's real host key
    host_key_line: str  # "ssh-ed25519 AAAA..."

    def node(self, **over) -> dict:
        """cluster.nodes.X values for a node reached through this server."""
        base = {"address": "127.0.0.1", "transport": "ssh", "ssh_port": self.port, "user": self.user,
                "key_file": str(self.key_file), "use_agent": False, "known_hosts": "strict",
                "known_hosts_file": str(self.known_hosts)}
        base.update(over)
        return base

    def authorize(self, user: str) -> None:
        keys = self.root / "keys" / user
        keys.write_text(Path(f"{self.key_file}.pub").read_text())
        keys.chmod(0o644)

    def log(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def ensure_sshd() -> None:
    if not Path(SSHD).exists():
        r = subprocess.run(["bash", str(REPO / "scripts" / "setup_sshd.sh")], capture_output=True, text=True)
        if r.returncode != 0 or not Path(SSHD).exists():
            pytest.skip(f"no OpenSSH server (scripts/setup_sshd.sh failed: {r.stderr[-500:]})")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation dir


def world_readable_tmpdir(prefix: str) -> Path:
    """A temp dir other users can enter (pytest's tmp_path is private to the test's user, but
    sshd reads keys and a sandbox login lives there as another user)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


def start_sshd(root: Path | None = None) -> SSHServer:
    ensure_sshd()
    root = root or world_readable_tmpdir("orchestr-sshd-")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    host_key = root / "host_ed25519"
    host_pub = _keygen(host_key)
    user_key, other_key = root / "id_ed25519", root / "other_ed25519"
    _keygen(user_key)
    _keygen(other_key)
    (root / "keys").mkdir()
    (root / "keys").chmod(0o755)
    port = _free_port()
    me = pwd.getpwuid(os.getuid()).pw_name
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'keys'}/%u",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
        "X11Forwarding no", "AllowTcpForwarding no", "AllowAgentForwarding no",
        "MaxSessions 64", "MaxStartups 64", "LogLevel VERBOSE", "",
    ]))
    known = root / "known_hosts"
    key_type, key_b64 = host_pub.split()[:2]
    known.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    log = open(root / "sshd.log", "ab")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    server = SSHServer(root=root, port=port, proc=proc, user=me, key_file=user_key, other_key_file=other_key,
                       known_hosts=known, host_key_line=f"{key_type} {key_b64}")
    server.authorize(me)
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {server.log()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.1)
    server.stop()
    pytest.fail(f"sshd did not listen on {port}: {server.log()}")


def sandbox_user(home: Path) -> str | None:
    """An unprivileged throwaway login whose home is `home` (root only; None otherwise)."""
    if os.getuid() != 0 or shutil.which("useradd") is None:
        return None
    subprocess.run(["userdel", SANDBOX_USER], capture_output=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["useradd", "--home-dir", str(home), "--create-home", "--shell", "/bin/sh",
                    "--no-user-group", "--gid", "nogroup", SANDBOX_USER], check=True, capture_output=True)
    # useradd leaves the account locked ("!"), which sshd refuses even for keys; "*" = no password
    subprocess.run(["usermod", "-p", "*", SANDBOX_USER], check=True, capture_output=True)
    return SANDBOX_USER


def drop_sandbox_user() -> None:
    subprocess.run(["userdel", SANDBOX_USER], capture_output=True)
