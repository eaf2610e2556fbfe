#!/usr/bin/env bash
# Check the oldest declared versions of the delta-loading stack (diffusers, peft, transformers, accelerate,
# safetensors from pyproject.toml): a throwaway venv holds exactly those versions, torch and everything else come
# from .venv (a .pth file appends its site-packages after the venv's own), then the delta tests run against them.
# Usage: bash scripts/check_versions.sh [pytest args]   (FLOOR_VENV=/path to keep/reuse the venv)
#
# Last run (2026-11-30, Python 3.11, torch 2.14.1): diffusers 0.35.0, peft 0.17.0, transformers 4.45.0,
# accelerate 1.0.0, safetensors 0.4.3 (huggingface_hub 0.36.2): tests/test_delta_export.py 12 passed, including
# mixed-rank and mixed dense+LoRA deltas at scale 1 (the LoRA part handed over without its metadata, as before,
# is off by 4.7e-2 relative on 0.35.0) and the uniform-rank kohya copy through diffusers' converter.
# tests/test_fingerprint.py needs the toy pipeline, whose tokenizer folder holds tokenizer.json only: transformers
# 4.x (slow CLIPTokenizer) needs vocab.json + merges.txt there (semu_diffusion.toy.tokenizer.write_clip_tokenizer_files
# writes them, same token ids); with them added, all 45 tests pass at these versions. The floors are the oldest
# co-installable set: diffusers 0.35 requires peft >= 0.17, accelerate 1.0 requires safetensors >= 0.4.3.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "run scripts/setup.sh first" >&2; exit 2; }
VENV=${FLOOR_VENV:-$(mktemp -d)/floor-venv}
PKGS="diffusers peft transformers accelerate safetensors"
FLOORS=$(.venv/bin/python - "$PKGS" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
want = sys.argv[1].split()
out = []
for d in deps:
    m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", d)
    if m and m.group(1).lower() in want:
        v = m.group(2)
        out.append(f"{m.group(1)}=={v}" + (".0" if v.count(".") == 1 else ""))
print(" ".join(out))
PY
)
echo "floor versions: $FLOORS"
[ -x "$VENV/bin/python" ] || .venv/bin/python -m venv "$VENV"
MAIN_SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
FLOOR_SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$MAIN_SITE" > "$FLOOR_SITE/zz_semu_main_venv.pth"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check $FLOORS
"$VENV/bin/python" - "$PKGS" "$FLOORS" <<'PY'
import importlib.metadata as md, sys
pins = dict(x.split("==") for x in sys.argv[2].split())
got = {p: md.version(p) for p in pins}
if any(got[p] != v for p, v in pins.items()):
    sys.exit(f"floor venv does not hold the floor versions: {got}")
print("installed:", ", ".join(f"{p}=={md.version(p)}" for p in sys.argv[1].split() + ["torch", "huggingface_hub"]))
PY
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHONPATH=$PWD "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_delta_export.py tests/test_fingerprint.py "$@"
