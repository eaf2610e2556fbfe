"""Rebuild the real CLIP BPE tokenizer (vocab.json + merges.txt) offline from open_clip's vocabulary file."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def open_clip_bpe_path() -> str:
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover
        raise ImportError("the toy tokenizer needs open_clip: pip install open_clip_torch") from e
    return os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")


def write_clip_tokenizer_files(out_dir: str | Path, model_max_length: int) -> Path:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt, configs) equal to CLIP's BPE."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    base = list(_bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    special = {"bos_token": cfg["bos_token"], "eos_token": cfg["eos_token"], "unk_token": cfg["unk_token"], "pad_token": cfg["pad_token"]}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return out
