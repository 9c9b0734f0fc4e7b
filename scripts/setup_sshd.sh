#!/usr/bin/env bash
# Prepares this machine for the SSH tests (tests/test_ssh*.py, tests/test_multinode*.py):
# installs Debian's OpenSSH server if /usr/sbin/sshd is missing and creates sshd's
# privilege-separation directory. Idempotent. It starts no daemon: each test session runs
# its own throwaway sshd (own host key, own config, loopback only, key auth only, free port).
#
#   scripts/setup_sshd.sh          install / check
#   scripts/setup_sshd.sh --check  exit 1 when sshd is not usable, install nothing
set -euo pipefail

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi

usable() {
  [[ -x /usr/sbin/sshd && -x "$(command -v ssh-keygen)" ]]
}

if [[ "${1:-}" == "--check" ]]; then
  usable && exit 0 || exit 1
fi

if usable; then
  echo "openssh-server already installed: $(/usr/sbin/sshd -V 2>&1 | head -1 || true)"
else
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  # --no-install-recommends: no ncurses-term/xauth; policy-rc.d-less containers may try to
  # start the packaged service, which is harmless (the tests never use it).
  $SUDO apt-get install -y --no-install-recommends openssh-server openssh-client procps
fi

# sshd refuses to start without its privilege-separation directory (normally made by systemd).
$SUDO mkdir -p /run/sshd
$SUDO chmod 0755 /run/sshd
/usr/sbin/sshd -V 2>&1 | head -1 || true
