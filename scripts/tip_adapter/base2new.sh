#!/usr/bin/env bash
# TipAdapter base-to-novel: bash scripts/tip_adapter/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new TipAdapter "$@"
