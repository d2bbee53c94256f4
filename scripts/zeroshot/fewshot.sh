#!/usr/bin/env bash
# ZeroShot few-shot: bash scripts/zeroshot/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot ZeroShot "$@"
