#!/usr/bin/env bash
# A real single-machine Slurm cluster from Debian's slurm-wlm and munge, for the Slurm tests
# (tests/test_slurm*.py) and for trying `orchestr launch launch.backend=slurm` on one machine:
# slurmctld and one slurmd (node name orchestr-n1) on this machine, both on 127.0.0.1, one
# partition `debug`. No cgroups (proctrack/linuxproc, task/none), so it runs in containers.
# Run as root. Idempotent: when the cluster already answers it only says so.
#
#   scripts/setup_slurm.sh          install if missing, configure, start
#   scripts/setup_slurm.sh --check  exit 1 unless the cluster answers; change nothing
#   scripts/setup_slurm.sh --stop   stop the daemons this script started (slurmd, slurmctld, munged)
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by orchestr scripts/setup_slurm.sh"
NODE=orchestr-n1

up() {
  command -v sinfo >/dev/null 2>&1 && timeout 3 scontrol ping 2>/dev/null | grep -q "is UP" &&
    timeout 3 sinfo -h -n "$NODE" -o %t 2>/dev/null | grep -Eq "^(idle|mix|alloc)"
}

case "${1:-}" in
  --check) up && exit 0 || exit 1 ;;
  --stop)
    for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
      [[ -s $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    exit 0 ;;
esac

if up; then
  echo "slurm already up: $(sinfo -h -o '%P %D %t' | head -1)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "setup_slurm.sh: run as root (it installs packages and starts slurmctld/slurmd)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: the credential service slurm authenticates with
if [[ ! -s /etc/munge/munge.key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
  echo "setup_slurm.sh: $CONF exists and was not written by this script; leaving it alone" >&2
  exit 1
fi
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
HOST=$(hostname -s)
cat >"$CONF" <<EOF
$MARK
ClusterName=orchestr
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# a requeued job waits this long before it may start again (default 120 s)
AuthInfo=cred_expire=5
# no cgroups: works in unprivileged containers; scancel signals the job's process tree
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
# quick passes: a requeued service is back within seconds of its begin time
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# a job that fails may put itself back in the queue (scontrol requeue); orchestr uses that
JobRequeue=1
ReturnToService=2
MinJobAge=300
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# the node advertises more CPUs than a small machine has, so a whole deployment fits
SlurmdParameters=config_overrides
NodeName=$NODE NodeHostname=$HOST NodeAddr=127.0.0.1 CPUs=16 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF

running() {  # daemon alive per its pid file (a zombie or a stale pid file does not count)
  [[ -s $1 ]] && [[ "$(ps -o stat= -p "$(cat "$1")" 2>/dev/null)" =~ ^[^Z] ]]
}
waitfor() {  # waitfor SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds
  local end=$((SECONDS + $1)); shift
  until "$@"; do ((SECONDS < end)) || return 1; sleep 0.2; done
}
ctld_up() { timeout 2 scontrol ping 2>/dev/null | grep -q "is UP"; }
node_ready() {
  local state
  state=$(timeout 2 sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  [[ $state =~ ^(down|drain) ]] && scontrol update nodename="$NODE" state=resume 2>/dev/null
  [[ $state =~ ^(idle|mix|alloc) ]]
}

running /run/slurmctld.pid || slurmctld
waitfor 30 ctld_up || true
running /run/slurmd.pid || slurmd -N "$NODE"
waitfor 30 node_ready || true
if ! up; then
  echo "setup_slurm.sh: slurm did not come up; see /var/log/slurm/*.log" >&2
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
fi
echo "slurm up: $(sinfo -h -o '%P %D %t')"
