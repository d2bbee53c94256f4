#!/usr/bin/env bash
# TipAdapterF few-shot: bash scripts/tip_adapter_f/fewshot.sh DATASET SHOTS   (env options: scripts/run.sh)
exec bash "$(dirname "$0")/../run.sh" fewshot TipAdapterF "$@"
