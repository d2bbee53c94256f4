#!/usr/bin/env bash
# TipAdapterF base-to-novel: bash scripts/tip_adapter_f/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new TipAdapterF "$@"
