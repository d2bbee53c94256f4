#!/usr/bin/env bash
# BioVLM base-to-novel: bash scripts/biovlm/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new BioVLM "$@"
