#!/usr/bin/env bash
# BiomedCoOp few-shot: bash scripts/biomedcoop/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot BiomedCoOp "$@"
