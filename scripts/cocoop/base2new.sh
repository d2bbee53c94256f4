#!/usr/bin/env bash
# CoCoOp base-to-novel: bash scripts/cocoop/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new CoCoOp "$@"
