#!/usr/bin/env bash
# OGKD base-to-novel: bash scripts/ogkd/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new OGKD "$@"
