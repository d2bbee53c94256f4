#!/usr/bin/env bash
# OGKD few-shot: bash scripts/ogkd/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot OGKD "$@"
