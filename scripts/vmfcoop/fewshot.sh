#!/usr/bin/env bash
# VMFCoOp few-shot: bash scripts/vmfcoop/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot VMFCoOp "$@"
