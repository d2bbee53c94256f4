#!/usr/bin/env bash
# ZeroShotSelective few-shot: bash scripts/zeroshot_selective/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot ZeroShotSelective "$@"
