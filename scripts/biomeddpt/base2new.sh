#!/usr/bin/env bash
# BiomedDPT base-to-novel: bash scripts/biomeddpt/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new BiomedDPT "$@"
