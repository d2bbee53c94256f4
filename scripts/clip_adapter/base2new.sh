#!/usr/bin/env bash
# CLIPAdapter base-to-novel: bash scripts/clip_adapter/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new CLIPAdapter "$@"
