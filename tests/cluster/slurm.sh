#!/usr/bin/env bash
# A single-node Slurm cluster on localhost, started by hand (no systemd), for tests/test_slurm.py
# and for trying profiles/slurm on a laptop.
#
#   tests/cluster/slurm.sh start <dir>   # write <dir>/slurm.conf, start munged, slurmctld, slurmd
#   tests/cluster/slurm.sh stop <dir>    # stop slurmd and slurmctld (munged is left running)
#
# It installs nothing: `bash .ci/system-packages.sh` installs Debian's slurm-wlm and munge.
# It must run as root (slurmd starts the jobs of any user).  Logs and state live under <dir>:
#   <dir>/slurm.conf  <dir>/log/{slurmctld,slurmd}.log  <dir>/state/  <dir>/spool/  <dir>/*.pid
# /etc/slurm/slurm.conf becomes a symlink to <dir>/slurm.conf (removed again by `stop`): the Slurm
# commands find their config there without SLURM_CONF, also inside jobs, where the slurm-jobstep
# plugin (0.6.1) starts `srun` with every SLURM_* variable but a few removed, SLURM_CONF included.
# An existing /etc/slurm/slurm.conf that is not such a symlink is never touched: `start` fails.
#
# Choices, all of them for a container or a CI machine without systemd:
#   * ProctrackType=proctrack/linuxproc: the default proctrack/cgroup needs the freezer cgroup,
#     which such machines lack (slurmd refuses to start).
#   * TaskPlugin=task/none, no cgroup.conf: nothing is confined; --mem is booked, not enforced.
#   * SelectType=select/cons_tres with CR_Core_Memory: cores *and* memory are consumable, so a
#     job's --mem really decides how many jobs share the node (as on a production cluster).
#   * No accounting database (AccountingStorageType=accounting_storage/none): `sacct` cannot see
#     the jobs, which is why the profile polls with squeue.  MinJobAge is explicit and long
#     (600 s) so that squeue still lists finished jobs when Snakemake asks for their state.
#   * SlurmdParameters=config_overrides: the node offers what slurm.conf says (at least 4 CPUs and
#     16 GB), so the workflow's declared memory (up to 6 GB) fits even on a small machine.
#
# Ports: SLURM_TEST_CTLD_PORT (default 6817) and SLURM_TEST_SLURMD_PORT (default 6818).
set -euo pipefail

usage() {
  echo "usage: $0 start|stop <dir>" >&2
  exit 2
}
[ $# -eq 2 ] || usage
action=$1
dir=$(realpath -m "$2")
conf=$dir/slurm.conf

start_munge() {
  # munged authenticates every message between the Slurm commands and daemons.
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0 # already running (a system munged, or one started earlier)
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "munged did not start (see /var/log/munge/munged.log)" >&2
  return 1
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  cpus=$((cpus < 4 ? 4 : cpus))
  mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
  mem=$((mem < 16000 ? 16000 : mem))
  cat >"$conf" <<EOF
# Written by tests/cluster/slurm.sh: a one-node test cluster on $host.
ClusterName=vhbbtest
SlurmctldHost=$host
SlurmctldPort=${SLURM_TEST_CTLD_PORT:-6817}
SlurmdPort=${SLURM_TEST_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_for_node() {
  for _ in $(seq 100); do
    if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      return 0
    fi
    sleep 0.2
  done
  echo "the node did not become idle; see $dir/log/" >&2
  sinfo -N -l >&2 || true
  return 1
}

stop_pid() {
  local pidfile=$1
  [ -s "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$pidfile"
}

case $action in
start)
  [ "$(id -u)" -eq 0 ] || { echo "run as root (slurmd must be able to start jobs)" >&2; exit 1; }
  for bin in munged slurmctld slurmd sbatch; do
    command -v "$bin" >/dev/null || PATH=$PATH:/usr/sbin
    command -v "$bin" >/dev/null || { echo "$bin not found: run .ci/system-packages.sh" >&2; exit 1; }
  done
  mkdir -p "$dir/log" "$dir/state" "$dir/spool"
  if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    echo "/etc/slurm/slurm.conf exists and is not a test symlink: not touching it" >&2
    exit 1
  fi
  write_conf
  mkdir -p /etc/slurm
  ln -sfn "$conf" /etc/slurm/slurm.conf
  export SLURM_CONF=$conf
  start_munge
  # -i: ignore stale state from an earlier run in the same <dir> (fresh job ids, no old jobs)
  slurmctld -f "$conf" -i
  slurmd -f "$conf"
  wait_for_node
  echo "Slurm is up ($conf, logs in $dir/log)"
  ;;
stop)
  export SLURM_CONF=$conf
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$conf" ]; then
    rm -f /etc/slurm/slurm.conf
  fi
  ;;
*)
  usage
  ;;
esac
