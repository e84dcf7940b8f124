#!/usr/bin/env bash
# Run a gptx command on this machine: one process, or N processes joined by jax.distributed on 127.0.0.1
# (CPU collectives over gloo), which exercises the multi-host path without a cluster.
#
# usage: launch/local.sh [--dry-run] [--processes N] [--port P] -- <command> --config=... --workdir=... [overrides]
set -euo pipefail

usage() {
  echo "usage: $0 [--dry-run] [--processes N] [--port P] -- <train|tokenizer|demo> --config=FILE --workdir=DIR [...]" >&2
  exit 2
}

dry_run=0 processes=1 port=12355
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --processes) processes="${2:?}"; shift 2 ;;
    --port) port="${2:?}"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
[[ $# -ge 1 ]] || usage
[[ "$*" == *--config=* && "$*" == *--workdir=* ]] || { echo "--config and --workdir are required" >&2; usage; }
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || { echo "--processes must be a positive integer" >&2; usage; }

python="${PYTHON:-python3}"
if [[ "$processes" == 1 ]]; then
  cmd=("$python" -m gptx.main "$@")
  if [[ $dry_run == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
  exit 0
fi

pids=()
for ((i = 0; i < processes; i++)); do
  cmd=("$python" -m gptx.main "$@" "--config.mesh.coordinator_address=127.0.0.1:$port"
       "--config.mesh.num_processes=$processes" "--config.mesh.process_id=$i")
  if [[ $dry_run == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; continue; fi
  "${cmd[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
