#!/usr/bin/env bash
# BiomedAP base-to-novel: bash scripts/biomedap/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new BiomedAP "$@"
