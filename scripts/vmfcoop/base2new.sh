#!/usr/bin/env bash
# VMFCoOp base-to-novel: bash scripts/vmfcoop/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new VMFCoOp "$@"
