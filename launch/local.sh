#!/usr/bin/env bash
# Start the training ranks of one node: `launch/local.sh CONFIG [key=value ...]`.
#
# Runs `vregion train CONFIG OVERRIDES --resume` in NPROC processes through DeepSpeed's per-node launcher.
# --resume is safe on a fresh run directory and continues an interrupted one, so re-running the same command
# (by hand, or by a requeued SLURM job) is how a run restarts. Every hyperparameter stays in the config.
#
# Environment (all optional):
#   NPROC        ranks on this node (default: visible GPUs, or 1 without a GPU)
#   MASTER_ADDR  rendezvous host (default 127.0.0.1; set by train.sbatch for multi-node runs)
#   MASTER_PORT  rendezvous port (default: a free port; required when NNODES > 1)
#   NNODES       nodes in the job, NODE_RANK this node's index (default 1 and 0; set by train.sbatch)
#   LOG_DIR      write each rank's output to LOG_DIR/<time>_rank<r>.log instead of the terminal
#   PYTHON       interpreter with vregion installed (default: python)
#
# Why DeepSpeed's launcher and not torchrun: when one rank fails it stops the others (polls every second,
# SIGTERM, SIGKILL after 30 s) and exits with that rank's own code, so 75 ("preempted, checkpoint written")
# reaches train.sbatch; torchrun turns every worker failure into exit code 1. The exception: a launcher that
# gets SIGTERM itself (scancel) exits 1 after its ranks stop, whatever they did; so each rank also writes
# $VREGION_STATUS_DIR/rank-<r>.status (exit, step, signal), which train.sbatch reads.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [key=value ...]   (env: NPROC, MASTER_ADDR, MASTER_PORT, NNODES, NODE_RANK, LOG_DIR)" >&2
  exit 2
fi
python=${PYTHON:-python}
nnodes=${NNODES:-1}
node_rank=${NODE_RANK:-0}

# Device ids this node's ranks use: SLURM or the user may have narrowed CUDA_VISIBLE_DEVICES already, and
# DeepSpeed's launcher overwrites that variable with the ids it is given.
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  mapfile -t visible < <(nvidia-smi --query-gpu=index --format=csv,noheader)
else
  visible=()
fi
nproc=${NPROC:-${#visible[@]}}
[ "$nproc" -ge 1 ] || nproc=1   # no GPU: one CPU rank (gloo)
ids=()
for ((i = 0; i < nproc; i++)); do
  ids+=("${visible[i]:-$i}")
done

if [ "$nnodes" -gt 1 ] && { [ -z "${MASTER_ADDR:-}" ] || [ -z "${MASTER_PORT:-}" ]; }; then
  echo "$0: NNODES=$nnodes needs MASTER_ADDR and MASTER_PORT (the same on every node)" >&2
  exit 2
fi
master_addr=${MASTER_ADDR:-127.0.0.1}
free_port='import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
master_port=${MASTER_PORT:-$("$python" -c "$free_port")}

# DeepSpeed's launcher takes the whole job's layout as base64 JSON {node: [device ids]}; ranks are numbered
# node by node, so every node must list the same number of ranks (homogeneous nodes).
layout="{"
for ((n = 0; n < nnodes; n++)); do
  layout+="\"node$n\": [$(IFS=,; echo "${ids[*]}")]"
  [ "$n" -eq $((nnodes - 1)) ] || layout+=", "
done
layout+="}"
world_info=$(printf '%s' "$layout" | base64 -w0 | tr '+/' '-_')

log_args=()
if [ -n "${LOG_DIR:-}" ]; then
  mkdir -p "$LOG_DIR"
  log_args=(--enable_each_rank_log "$LOG_DIR")
fi

# SLURM's `--signal=USR1@T` warning (and `scancel --signal=USR1`) reaches every process of the job step.
# The ranks checkpoint and exit 75 on it; the launcher has no handler and would die of it, orphaning them.
# An ignored signal stays ignored across exec; the trainer installs its own handler over it.
trap '' USR1
exec "$python" -m deepspeed.launcher.launch --world_info="$world_info" --node_rank="$node_rank" \
  --master_addr="$master_addr" --master_port="$master_port" "${log_args[@]}" \
  --module vregion.cli train "$@" --resume
