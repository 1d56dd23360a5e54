#!/usr/bin/env bash
# A real two-node SLURM cluster on this machine, for tests and for trying train.sbatch without a cluster.
#
#   launch/slurm/local_cluster.sh start DIR   # munged, slurmctld, slurmd -N n1, slurmd -N n2; config under DIR
#   export SLURM_CONF=DIR/slurm.conf          # then sbatch/squeue/scontrol talk to it
#   launch/slurm/local_cluster.sh stop DIR    # stops exactly the daemons that `start` recorded
#
# Everything (munge key and socket, slurm.conf, state, spool, pid and log files) lives under DIR, so it never
# touches a system SLURM or munge. Needs the Debian packages slurm-wlm and munge, and root (slurmd runs jobs
# as their submitter). Both "nodes" are this host: NodeAddr=127.0.0.1 with one port each.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
nodes=(n1 n2)

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits until `check` succeeds, for at most $2 seconds.
wait_for() {
  local check=$1 seconds=$2 i
  for ((i = 0; i < seconds * 10; i++)); do
    if eval "$check" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

write_conf() {
  local host cpus ctld_port
  host=$(hostname)
  # Each slurmd sees the whole machine. CPUs must not exceed what slurmd detects or the node is drained;
  # config_overrides makes slurmd report the configured values, so a busy or odd machine cannot drain it.
  cpus=$(nproc)
  ctld_port=$(free_port)
  cat >"$dir/slurm.conf" <<EOF
ClusterName=vregion-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
# Test all pending jobs every 2 s (default 60): a requeued job otherwise waits up to a minute to start again.
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# Finished jobs stay visible to scontrol for 10 minutes (tests read their exit code and restart count).
MinJobAge=600
KillWait=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=DEFAULT CPUs=$cpus State=UNKNOWN
EOF
  local n
  for n in "${nodes[@]}"; do
    echo "NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$(free_port)" >>"$dir/slurm.conf"
  done
  echo "PartitionName=local Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE State=UP" \
    "OverSubscribe=YES" >>"$dir/slurm.conf"
}

start() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    || { echo "slurmctld, slurmd and munged are needed: apt-get install slurm-wlm munge" >&2; exit 1; }
  if [ -f "$dir/run/pids" ]; then
    echo "a cluster is already recorded in $dir (run: $0 stop $dir)" >&2
    exit 1
  fi
  mkdir -p "$dir"/{munge,state,run,log} "${nodes[@]/#/$dir/spool/}"
  chmod 755 "$dir/munge"   # munged wants its socket folder searchable by everyone
  export SLURM_CONF=$dir/slurm.conf
  write_conf
  rm -f "$dir"/run/*.pid   # a stale pid file would pass for a started daemon
  : >"$dir/run/pids"

  # A private munge key and socket: the system munged (if any) is left alone.
  mungekey --create --force --keyfile="$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"
  wait_for "[ -s '$dir/run/munged.pid' ] && [ -S '$dir/munge/munge.socket' ]" 10 \
    || { echo "munged did not start: $dir/log/munged.log" >&2; exit 1; }
  echo "munged $(cat "$dir/run/munged.pid")" >>"$dir/run/pids"

  slurmctld -i   # -i: ignore state left by an earlier run in this folder
  wait_for "[ -s '$dir/run/slurmctld.pid' ]" 20 \
    || { echo "slurmctld did not start: $dir/log/slurmctld.log" >&2; exit 1; }
  echo "slurmctld $(cat "$dir/run/slurmctld.pid")" >>"$dir/run/pids"
  local n
  for n in "${nodes[@]}"; do
    slurmd -N "$n"
    wait_for "[ -s '$dir/run/slurmd-$n.pid' ]" 20 \
      || { echo "slurmd $n did not start: $dir/log/slurmd-$n.log" >&2; exit 1; }
    echo "slurmd-$n $(cat "$dir/run/slurmd-$n.pid")" >>"$dir/run/pids"
  done
  # Ready once both nodes registered and are idle (a drained node would never run a job).
  if ! wait_for "[ \"\$(sinfo -h -N -t idle -o %N | sort -u | wc -l)\" -eq ${#nodes[@]} ]" 60; then
    sinfo -N -l >&2 || true
    echo "nodes did not become idle; logs in $dir/log" >&2
    exit 1
  fi
  echo "SLURM_CONF=$SLURM_CONF"
}

# Running, and not just an exited process its parent has not reaped yet (a container's init may be slow to).
alive() { kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

stop() {
  [ -f "$dir/run/pids" ] || return 0
  local name pid jobs
  # Jobs first: a job's processes (slurmstepd and its tasks) outlive slurmd if left running.
  export SLURM_CONF=$dir/slurm.conf
  jobs=$(squeue -h -o %A 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086  # one argument per job id
    scancel --full --signal=KILL $jobs 2>/dev/null || true
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    wait_for '[ -z "$(squeue -h -o %A)" ]' 60 || echo "jobs still listed: $(squeue -h -o %A | xargs)" >&2
  fi
  # Reverse order: slurmd before slurmctld before munged.
  tac "$dir/run/pids" | while read -r name pid; do
    if alive "$pid"; then
      kill -TERM "$pid" || true
      wait_for "! alive $pid" 15 || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$dir/run/pids"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF=$dir/slurm.conf sinfo -N -l ;;
  *) usage ;;
esac
