#!/usr/bin/env bash
# ProGrad few-shot: bash scripts/prograd/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot ProGrad "$@"
