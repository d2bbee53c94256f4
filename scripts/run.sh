#!/usr/bin/env bash
# Shared runner behind every scripts/<method>/{fewshot,base2new}.sh.
#   bash scripts/run.sh fewshot  TRAINER DATASET SHOTS
#   bash scripts/run.sh base2new TRAINER DATASET
# Optional environment: DATA (datasets root, default ./data), BACKBONE (default: the config's, BiomedCLIP),
# SEEDS (default "1 2 3"), OUTPUT (default ./output), TAG (default "default"), WORKERS (default 1),
# GPUS (e.g. "0,1"), OPTS (extra KEY VALUE config options for every run).
# Finished runs (results.json present) are skipped, so rerunning completes only what is missing.
set -euo pipefail
usage() { echo "usage: $0 fewshot TRAINER DATASET SHOTS | base2new TRAINER DATASET" >&2; exit 2; }
[ $# -ge 3 ] || usage
protocol=$1 trainer=$2 dataset=$3
case "$protocol" in
  fewshot) [ $# -eq 4 ] || usage; shots=$4 ;;
  base2new) [ $# -eq 3 ] || usage; shots=16 ;;
  *) usage ;;
esac
seeds=${SEEDS:-1 2 3}
args=(--methods "$trainer" --datasets "$dataset" --shots "$shots" --seeds "${seeds// /,}"
      --protocol "$protocol" --root "${DATA:-data}" --output "${OUTPUT:-output}" --tag "${TAG:-default}"
      --workers "${WORKERS:-1}")
[ -n "${BACKBONE:-}" ] && args+=(--backbone "$BACKBONE")
[ -n "${GPUS:-}" ] && args+=(--gpus "$GPUS")
# shellcheck disable=SC2206  # OPTS is a list of KEY VALUE words
[ -n "${OPTS:-}" ] && args+=(--opts ${OPTS})
exec python -m vmfcoop.tools.compare "${args[@]}"
