#!/usr/bin/env bash
# LinearProbe base-to-novel: bash scripts/linear_probe/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new LinearProbe "$@"
