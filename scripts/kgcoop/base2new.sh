#!/usr/bin/env bash
# KgCoOp base-to-novel: bash scripts/kgcoop/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new KgCoOp "$@"
