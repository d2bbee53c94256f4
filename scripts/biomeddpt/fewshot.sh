#!/usr/bin/env bash
# BiomedDPT few-shot: bash scripts/biomeddpt/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot BiomedDPT "$@"
