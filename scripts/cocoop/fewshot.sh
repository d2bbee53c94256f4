#!/usr/bin/env bash
# CoCoOp few-shot: bash scripts/cocoop/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot CoCoOp "$@"
