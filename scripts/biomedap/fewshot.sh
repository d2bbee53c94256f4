#!/usr/bin/env bash
# BiomedAP few-shot: bash scripts/biomedap/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot BiomedAP "$@"
