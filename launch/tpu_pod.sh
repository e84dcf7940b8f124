#!/usr/bin/env bash
# Run a gptx command on every worker of a Cloud TPU VM slice: create the slice (or reuse it when it exists),
# copy this checkout to all workers, install it, run one `python -m gptx.main` command on all of them at once
# (JAX's multi-host runtime joins them; each worker logs to ~/gptx_run.log), fetch the logs, and delete the
# slice when asked.
#
# usage: launch/tpu_pod.sh [--dry-run] --name NAME --zone ZONE --type ACCELERATOR_TYPE [--version RUNTIME]
#                          [--project PROJECT] [--spot] [--delete] [--logs DIR] [-- <command> --config=... --workdir=...]
#   e.g. launch/tpu_pod.sh --name gptx-350m --zone us-west4-a --type v5litepod-16 -- \
#          train --config=configs/gpt3.py:350m --workdir=gs://my-bucket/gpt3-350m   # a bucket all workers write
#        launch/tpu_pod.sh --name gptx-350m --zone us-west4-a --type v5litepod-16 --delete   # only delete
set -euo pipefail

usage() {
  cat >&2 <<EOF
usage: $0 [--dry-run] --name NAME --zone ZONE --type ACCELERATOR_TYPE [--version RUNTIME] [--project PROJECT]
          [--spot] [--delete] [--logs DIR] [-- <command> --config=FILE --workdir=DIR [overrides]]
  --type     e.g. v5litepod-16, v4-32, v5p-16, v6e-16
  --delete   delete the slice after the command (or, with no command, just delete it)
  --dry-run  print the commands instead of running them
EOF
  exit 2
}

dry_run=0 name="" zone="" type="" version="" project="" spot=0 delete=0 logs=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --name) name="${2:-}"; shift 2 || usage ;;
    --zone) zone="${2:-}"; shift 2 || usage ;;
    --type) type="${2:-}"; shift 2 || usage ;;
    --version) version="${2:-}"; shift 2 || usage ;;
    --project) project="${2:-}"; shift 2 || usage ;;
    --logs) logs="${2:-}"; shift 2 || usage ;;
    --spot) spot=1; shift ;;
    --delete) delete=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
[[ -n "$name" && -n "$zone" && -n "$type" ]] || { echo "--name, --zone and --type are required" >&2; usage; }
if [[ $# -eq 0 && $delete == 0 ]]; then echo "give a command after -- (or --delete)" >&2; usage; fi
if [[ $# -gt 0 && ( "$*" != *--config=* || "$*" != *--workdir=* ) ]]; then
  echo "--config and --workdir are required" >&2; usage
fi

# Workers (hosts) in the slice and the default software image, from the accelerator type. v4/v5p sizes count
# TensorCores (2 per chip, 4 chips per host); v5e/v6e sizes count chips (4 per host from 16 chips up, one host below).
family="${type%-*}" size="${type##*-}"
[[ "$size" =~ ^[0-9]+$ ]] || { echo "--type $type is not FAMILY-SIZE (e.g. v5litepod-16)" >&2; usage; }
case "$family" in
  v4) workers=$(( (size + 7) / 8 )); image="tpu-ubuntu2204-base" ;;
  v5p) workers=$(( (size + 7) / 8 )); image="v2-alpha-tpuv5" ;;
  v5litepod) workers=$(( size >= 16 ? size / 4 : 1 )); image="v2-alpha-tpuv5-lite" ;;
  v6e) workers=$(( size >= 16 ? size / 4 : 1 )); image="v2-alpha-tpuv6e" ;;
  *) echo "unknown TPU family $family in --type $type" >&2; usage ;;
esac
version="${version:-$image}"
logs="${logs:-logs/$name}"
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)

run() {  # prints the command in dry runs, runs it otherwise
  if [[ $dry_run == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [[ $# -gt 0 ]]; then
  # 1. Reuse the slice if it exists, else create it.
  create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$type" --version="$version")
  [[ $spot == 1 ]] && create+=(--spot)
  if [[ $dry_run == 1 ]]; then
    printf '%q ' "${tpu[@]}" describe "$name" "${where[@]}"; printf '>/dev/null 2>&1 || '; run "${create[@]}"
  elif ! "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
    "${create[@]}"
  fi

  # 2. Copy this checkout (without git history or local run directories) to every worker and install it.
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  tarball="/tmp/gptx-$name.tgz"
  run tar -czf "$tarball" -C "$repo" --exclude=.git --exclude='workdir*' --exclude='logs' --exclude='__pycache__' .
  run "${tpu[@]}" scp "$tarball" "$name:gptx.tgz" "${where[@]}" --worker=all
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all \
    --command='rm -rf ~/gptx && mkdir -p ~/gptx && tar -xzf ~/gptx.tgz -C ~/gptx && pip install -q -e "$HOME/gptx[tpu,gcs]"'

  # 3. The same command on all workers at once; jax.distributed finds its peers from the TPU metadata.
  gptx_cmd=(python3 -m gptx.main "$@")
  [[ $workers -gt 1 ]] && gptx_cmd+=(--config.mesh.multihost=yes)
  remote="set -o pipefail; cd ~/gptx && $(printf '%q ' "${gptx_cmd[@]}")2>&1 | tee ~/gptx_run.log"
  status=0
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$remote" || status=$?

  # 4. Every worker's log, also after a failure.
  run mkdir -p "$logs"
  for ((w = 0; w < workers; w++)); do
    run "${tpu[@]}" scp "$name:gptx_run.log" "$logs/worker-$w.log" "${where[@]}" --worker="$w" || true
  done
else
  status=0
fi

# 5. Delete only when asked: a kept slice is reused by the next launch.
if [[ $delete == 1 ]]; then
  run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
fi
exit "$status"
