#!/usr/bin/env bash
# KgCoOp few-shot: bash scripts/kgcoop/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot KgCoOp "$@"
