#!/usr/bin/env bash
# LPPlusPlus few-shot: bash scripts/lp_plus_plus/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot LPPlusPlus "$@"
