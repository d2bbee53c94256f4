#!/usr/bin/env bash
# ZeroShotSelective base-to-novel: bash scripts/zeroshot_selective/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new ZeroShotSelective "$@"
