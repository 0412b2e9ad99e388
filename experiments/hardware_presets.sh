#!/usr/bin/env bash
# Rebuild the shipped MODEL@SYSTEM latency presets from NVIDIA AIConfigurator's tables
# (needs pip install -e ".[hardware]"; docs/hardware.md). One line per preset.
set -euo pipefail
cd "$(dirname "$0")/../afd_jax/presets"
build() { afd-jax hardware build "$@"; }
for sys in h100_sxm h200_sxm b200_sxm; do
  build --model deepseek-ai/DeepSeek-V3 --system "$sys" --attn-gpus 8 --ffn-gpus 16 --out "deepseek-v3@$sys.toml"
  build --model Qwen/Qwen3-235B-A22B-FP8 --system "$sys" --attn-gpus 4 --ffn-gpus 8 --out "qwen3-235b-a22b@$sys.toml"
  build --model Qwen/Qwen3-Coder-480B-A35B-Instruct --system "$sys" --attn-gpus 8 --ffn-gpus 16 --out "qwen3-coder-480b-a35b@$sys.toml"
done
build --model deepseek-ai/DeepSeek-V3 --system gb200 --attn-gpus 4 --ffn-gpus 16 --out "deepseek-v3@gb200.toml"
build --model Qwen/Qwen3-235B-A22B-FP8 --system gb200 --attn-gpus 4 --ffn-gpus 8 --out "qwen3-235b-a22b@gb200.toml"
build --model Qwen/Qwen3-Coder-480B-A35B-Instruct --system gb200 --attn-gpus 4 --ffn-gpus 16 --out "qwen3-coder-480b-a35b@gb200.toml"
