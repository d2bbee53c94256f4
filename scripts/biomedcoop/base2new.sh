#!/usr/bin/env bash
# BiomedCoOp base-to-novel: bash scripts/biomedcoop/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new BiomedCoOp "$@"
