#!/usr/bin/env bash
# ZeroShotEnsemble base-to-novel: bash scripts/zeroshot_ensemble/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new ZeroShotEnsemble "$@"
