#!/usr/bin/env bash
# CLIPAdapter few-shot: bash scripts/clip_adapter/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot CLIPAdapter "$@"
