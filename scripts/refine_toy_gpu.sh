#!/usr/bin/env bash
# Improve the shipped toy pipeline on one CUDA GPU (how the shipped v2.1 weights were made; see toy/MODEL_CARD.md).
# The world is rendered once (all cores), then two candidates train side by side on the GPU:
#   ft  - UNet + text encoder continued from the shipped weights (shipped VAE), batch 1024
#   new - a VAE from scratch with the edge loss (keeps 2-px pixelation and corners), then UNet + text encoder
#         from scratch on its latents, batch 1024
# toy-CLIP and toy-nudity are not touched. Pick the candidate with `semu-toy check` after assembling each:
#   mkdir C; cp ft/*.safetensors C/; cp -r <vae folder> C/_vae; semu-toy train --out C --stages assemble
# Usage: bash scripts/refine_toy_gpu.sh OUT_DIR [FT_BUDGET_S] [NEW_UNET_BUDGET_S]
set -uo pipefail
OUT_DIR=${1:?output folder}; FT_BUDGET=${2:-400}; NEW_BUDGET=${3:-270}
WORK=${TOY_WORK:-/tmp/toy-refine}
P=semu_diffusion/toy/weights/pipeline
mkdir -p "$WORK/ft/_vae" "$WORK/new" "$OUT_DIR/ft" "$OUT_DIR/new"
cp $P/unet/diffusion_pytorch_model.safetensors "$WORK/ft/unet.safetensors"
cp $P/text_encoder/model.safetensors "$WORK/ft/text.safetensors"
cp $P/vae/config.json $P/vae/diffusion_pytorch_model.safetensors "$WORK/ft/_vae/"
toy() { python3 -c 'import sys; from semu_diffusion.cli import toy_main; toy_main(sys.argv[1:])' train --device cuda --gpu-schedule --out "$1" "${@:2}"; }
t0=$(date +%s)
toy "$WORK/ft" --stages data > "$WORK/log_data.txt" 2>&1 || { tail -30 "$WORK/log_data.txt"; exit 1; }
ln -sf "$WORK/ft/_data.npz" "$WORK/new/_data.npz"
echo "world rendered in $(( $(date +%s) - t0 )) s"
UNET="--unet-batch 1024 --unet-steps 20000 --ema-decay 0.999"
( toy "$WORK/ft" --stages finetune $UNET --unet-lr 3e-4 --unet-budget-s "$FT_BUDGET" > "$WORK/log_ft.txt" 2>&1
  echo "ft exit $? at $(( $(date +%s) - t0 )) s"
  cp "$WORK/ft/unet.safetensors" "$WORK/ft/text.safetensors" "$OUT_DIR/ft/" ) &
( toy "$WORK/new" --stages vae,unet $UNET --unet-lr 6e-4 --unet-budget-s "$NEW_BUDGET" > "$WORK/log_new.txt" 2>&1
  echo "new exit $? at $(( $(date +%s) - t0 )) s"
  cp "$WORK/new/unet.safetensors" "$WORK/new/text.safetensors" "$OUT_DIR/new/"
  cp "$WORK/new/_vae/diffusion_pytorch_model.safetensors" "$OUT_DIR/new/vae.safetensors" ) &
wait
mkdir -p "$WORK/facts" && cp "$WORK/ft/train_facts.json" "$WORK/facts/ft.json"; cp "$WORK/new/train_facts.json" "$WORK/facts/new.json"
cp "$WORK/new/_vae/config.json" "$WORK/facts/new_vae_config.json"; cp "$WORK"/log_*.txt "$WORK/facts/"
for c in ft new; do python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: v for k, v in d.items() if not k.startswith('config')})" "$WORK/facts/$c.json" $c; done
tail -c 300 "$WORK/log_ft.txt"; echo; tail -c 300 "$WORK/log_new.txt"; echo
