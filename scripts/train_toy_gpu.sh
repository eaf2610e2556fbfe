#!/usr/bin/env bash
# Rebuild the toy-world models on one CUDA GPU (how the shipped weights were made; see toy/MODEL_CARD.md).
# Usage: bash scripts/train_toy_gpu.sh OUT_DIR [UNET_BUDGET_SECONDS]
# Three processes: the world is rendered once (all cores), then toy-CLIP + toy-nudity and VAE + UNet train side by
# side on the GPU (the models are small, so the GPU has room for both). Each finished artefact is copied to OUT_DIR
# at once, so a cut run still returns what it finished. Assemble the pipeline afterwards on any machine:
#   semu-toy train --out OUT_DIR --stages assemble
set -uo pipefail
OUT_DIR=${1:?output folder}; BUDGET=${2:-330}; EXTRA=${TOY_TRAIN_ARGS:-}
WORK=${TOY_WORK:-/tmp/toy-train}
mkdir -p "$WORK" "$OUT_DIR"
toy() { python3 -c 'import sys; from semu_diffusion.cli import toy_main; toy_main(sys.argv[1:])' train --device "${TOY_DEVICE:-cuda}" --gpu-schedule --out "$WORK" $EXTRA "$@"; }
t0=$(date +%s)
toy --stages data > "$WORK/log_data.txt" 2>&1 || { tail -30 "$WORK/log_data.txt"; exit 1; }
echo "world rendered in $(( $(date +%s) - t0 )) s"
( toy --stages clip,nudity > "$WORK/log_clip.txt" 2>&1; echo "clip+nudity exit $? at $(( $(date +%s) - t0 )) s";
  cp "$WORK"/toyclip.safetensors "$WORK"/toynudity.safetensors "$OUT_DIR"/ 2>/dev/null ) &
( toy --stages vae,unet --unet-budget-s "$BUDGET" > "$WORK/log_unet.txt" 2>&1; echo "vae+unet exit $? at $(( $(date +%s) - t0 )) s";
  cp "$WORK"/unet.safetensors "$WORK"/text.safetensors "$OUT_DIR"/ 2>/dev/null;
  cp "$WORK"/_vae/diffusion_pytorch_model.safetensors "$OUT_DIR"/vae.safetensors 2>/dev/null ) &
wait
( cd "$WORK" && tar cf "$OUT_DIR/small.tar" toyclip.json toynudity.json _vae/config.json train_facts.json log_*.txt 2>/dev/null )
tail -c 1500 "$WORK"/log_clip.txt; echo; tail -c 1500 "$WORK"/log_unet.txt; echo
cat "$WORK"/train_facts.json | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: v for k, v in d.items() if not k.startswith("config")})'
ls -la "$OUT_DIR"
