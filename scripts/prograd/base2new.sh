#!/usr/bin/env bash
# ProGrad base-to-novel: bash scripts/prograd/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new ProGrad "$@"
