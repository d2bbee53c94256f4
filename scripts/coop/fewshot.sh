#!/usr/bin/env bash
# CoOp few-shot: bash scripts/coop/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot CoOp "$@"
