#!/usr/bin/env bash
# ZeroShot base-to-novel: bash scripts/zeroshot/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new ZeroShot "$@"
