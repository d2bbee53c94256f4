#!/usr/bin/env bash
# BioVLM few-shot: bash scripts/biovlm/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot BioVLM "$@"
