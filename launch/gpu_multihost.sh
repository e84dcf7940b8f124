#!/usr/bin/env bash
# Run a gptx command on several GPU nodes of a SLURM cluster: one process per node (JAX drives all of a node's
# GPUs from one process), joined by jax.distributed with the first node of the allocation as coordinator.
# Run it from a login node (srun allocates) or inside an salloc/sbatch allocation (srun uses it). The checkout
# must be on a filesystem all nodes share, and the workdir too.
#
# usage: launch/gpu_multihost.sh [--dry-run] --nodes N [--gpus-per-node G] [--partition P] [--account A]
#                                [--time HH:MM:SS] [--port PORT] [--logs DIR] -- <command> --config=... --workdir=...
#   e.g. launch/gpu_multihost.sh --nodes 2 --gpus-per-node 8 -- \
#          train --config=configs/gpt3.py:350m --workdir=/shared/runs/gpt3-350m
#
# Inside each task srun starts `launch/gpu_multihost.sh --task -- ...`, which turns SLURM's environment into
# the coordinator address, process count and process id of config.mesh.
set -euo pipefail

usage() {
  cat >&2 <<EOF
usage: $0 [--dry-run] --nodes N [--gpus-per-node G] [--partition P] [--account A] [--time HH:MM:SS] [--port PORT]
          [--logs DIR] -- <command> --config=FILE --workdir=DIR [overrides]
  --dry-run  print the srun command instead of running it
EOF
  exit 2
}

dry_run=0 task=0 nodes="" gpus=8 partition="" account="" time_limit="" port=12355 logs="logs"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --task) task=1; shift ;;
    --nodes) nodes="${2:-}"; shift 2 || usage ;;
    --gpus-per-node) gpus="${2:-}"; shift 2 || usage ;;
    --partition) partition="${2:-}"; shift 2 || usage ;;
    --account) account="${2:-}"; shift 2 || usage ;;
    --time) time_limit="${2:-}"; shift 2 || usage ;;
    --port) port="${2:-}"; shift 2 || usage ;;
    --logs) logs="${2:-}"; shift 2 || usage ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
[[ $# -ge 1 ]] || { echo "give a command after --" >&2; usage; }
[[ "$*" == *--config=* && "$*" == *--workdir=* ]] || { echo "--config and --workdir are required" >&2; usage; }
[[ "$port" =~ ^[0-9]+$ ]] || { echo "--port must be a number" >&2; usage; }
python="${PYTHON:-python3}"

if [[ $task == 1 ]]; then
  # One SLURM task: the coordinator is the allocation's first node; every task computes the same address.
  : "${SLURM_PROCID:?--task runs inside srun (SLURM_PROCID is not set)}" "${SLURM_NTASKS:?}" "${SLURM_JOB_NODELIST:?}"
  coordinator="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')"  # awk reads it all: no SIGPIPE under pipefail
  exec "$python" -m gptx.main "$@" "--config.mesh.coordinator_address=$coordinator:$port" \
    "--config.mesh.num_processes=$SLURM_NTASKS" "--config.mesh.process_id=$SLURM_PROCID"
fi

[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || { echo "--nodes N (a positive integer) is required" >&2; usage; }
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || { echo "--gpus-per-node must be a positive integer" >&2; usage; }
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cmd=(srun --nodes="$nodes" --ntasks-per-node=1 --gpus-per-node="$gpus" --kill-on-bad-exit=1
     --output="$logs/gptx-%j-%t.log")
[[ -n "$partition" ]] && cmd+=(--partition="$partition")
[[ -n "$account" ]] && cmd+=(--account="$account")
[[ -n "$time_limit" ]] && cmd+=(--time="$time_limit")
cmd+=(bash "$script" --task --port "$port" -- "$@")
if [[ $dry_run == 1 ]]; then
  printf '%q ' mkdir -p "$logs"; echo
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
mkdir -p "$logs"
exec "${cmd[@]}"
