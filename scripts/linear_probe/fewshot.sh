#!/usr/bin/env bash
# LinearProbe few-shot: bash scripts/linear_probe/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot LinearProbe "$@"
