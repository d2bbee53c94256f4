#!/usr/bin/env bash
# TipAdapter few-shot: bash scripts/tip_adapter/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot TipAdapter "$@"
