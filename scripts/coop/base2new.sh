#!/usr/bin/env bash
# CoOp base-to-novel: bash scripts/coop/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new CoOp "$@"
