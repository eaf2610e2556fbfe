"""Byte-reproducible deltas: the same semu-erase command in two processes with different hash seeds writes the same
file (same sha256): fixed header order, nothing run-dependent in the provenance."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import torch

from semu_diffusion.delta import atomic_save

TINY = ["--concept", "triangle", "--steps", "2", "--forget-n", "2", "--gen-steps", "2", "--quiet", "--json"]


def _erase(out, hash_seed: str):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    code = "import sys; from semu_diffusion.cli import erase_main; erase_main(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, *TINY, "--out", str(out)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_two_identical_erase_runs_give_the_same_sha256(tmp_path, toy_available):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _erase(a, "1")
    _erase(b, "2")
    ha, hb = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b))
    assert ha == hb, "two identical runs wrote different files"


def test_header_order_is_fixed_whatever_the_dict_order(tmp_path):
    """The metadata keys come out sorted and the tensors by offset, whatever order they were given in."""
    t = {"b": torch.ones(3), "a": torch.arange(5.0)}
    p1 = atomic_save(t, tmp_path / "1.safetensors", {"z": "1", "format": "pt", "a": "2"})
    p2 = atomic_save(dict(reversed(list(t.items()))), tmp_path / "2.safetensors", {"a": "2", "z": "1", "format": "pt"})
    raw = p1.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    head = json.loads(raw[8:8 + n])
    assert list(head) == ["__metadata__", "a", "b"] and list(head["__metadata__"]) == ["a", "format", "z"]
    from safetensors.torch import load_file

    assert torch.equal(load_file(p1)["a"], torch.arange(5.0)) and torch.equal(load_file(p2)["b"], torch.ones(3))
