#!/usr/bin/env bash
# ZeroShotEnsemble few-shot: bash scripts/zeroshot_ensemble/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot ZeroShotEnsemble "$@"
