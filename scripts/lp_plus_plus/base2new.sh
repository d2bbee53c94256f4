#!/usr/bin/env bash
# LPPlusPlus base-to-novel: bash scripts/lp_plus_plus/base2new.sh DATASET   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" base2new LPPlusPlus "$@"
