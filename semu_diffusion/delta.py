"""The delta file: one .safetensors that stock diffusers loads with ``pipe.load_lora_weights``.

Keys ``unet.<module>.lora_A.weight`` / ``unet.<module>.lora_B.weight`` (fp32), the ``lora_adapter_metadata``
header (peft LoraConfig with rank_pattern / alpha_pattern, alpha = rank so the scale is 1), and
``semu_provenance`` (JSON): format version, method, concept(s), anchor, base model id and fingerprint, tau,
ranks, steps, seed, toolkit version. Dense updates (per-channel SEMU, masked methods) are stored as
``unet.<module>.delta_weight`` and load only with :func:`load_delta`.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .methods.base import Delta

FORMAT_VERSION = 1
PROVENANCE_KEY = "semu_provenance"
LORA_METADATA_KEY = "lora_adapter_metadata"  # what diffusers reads
PREFIX = "unet."


class DeltaError(ValueError):
    """A delta file that cannot be used with this base model; the message says why and what to do."""


def fingerprint(unet: nn.Module, modules: list[str], samples: int = 4096) -> str:
    """Hash of the targeted base weights: names, shapes and a fixed subsample of values rounded to fp16.

    Independent of the dtype the model was loaded in (fp32/fp16) and of the device.
    """
    h = hashlib.sha256()
    for name in sorted(modules):
        try:
            w = unet.get_submodule(name).weight
        except AttributeError:
            h.update(f"{name}:missing".encode())
            continue
        flat = w.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        sub = torch.cat([flat[:samples], flat[::step][:samples]]).to("cpu", torch.float16)
        h.update(f"{name}:{tuple(w.shape)}".encode())
        h.update(sub.numpy().tobytes())
    return h.hexdigest()[:32]


def base_weight(unet: nn.Module, name: str) -> torch.Tensor:
    """The base weight of a module, also when it is wrapped by a SEMU layer (``.base``)."""
    m = unet.get_submodule(name)
    return getattr(m, "base", m).weight


def _lora_metadata(delta: Delta) -> dict:
    ranks = {n: int(delta.lora[n][1].shape[0]) for n in sorted(delta.lora)}
    r0 = max(set(ranks.values()), key=list(ranks.values()).count) if ranks else 1
    cfg = {
        "r": r0,
        "lora_alpha": r0,
        "target_modules": sorted(ranks),
        "rank_pattern": {n: r for n, r in ranks.items() if r != r0},
        "alpha_pattern": {n: r for n, r in ranks.items() if r != r0},
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": False,
        "use_dora": False,
        "use_rslora": False,
    }
    return {f"{PREFIX.rstrip('.')}.{k}": v for k, v in cfg.items()}


def atomic_save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write a safetensors file via temp file + rename: an existing file is never half-overwritten."""
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise DeltaError(f"output {p} must end in .safetensors")
    d = p.parent if str(p.parent) else Path(".")
    if not d.exists():
        raise DeltaError(f"output folder {d} does not exist: create it or choose another --out")
    if not os.access(d, os.W_OK):
        raise DeltaError(f"output folder {d} is not writable: choose another --out")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def save_delta(path: str | Path, delta: Delta, provenance: dict) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for n, (B, A) in delta.lora.items():
        tensors[f"{PREFIX}{n}.lora_A.weight"] = A.float().cpu()
        tensors[f"{PREFIX}{n}.lora_B.weight"] = B.float().cpu()
    for n, dw in delta.dense.items():
        tensors[f"{PREFIX}{n}.delta_weight"] = dw.float().cpu()
    prov = dict(provenance)
    prov.update({"format_version": FORMAT_VERSION, "delta_format": delta.format})
    meta = {"format": "pt", PROVENANCE_KEY: json.dumps(prov, sort_keys=True)}
    if delta.lora:
        meta[LORA_METADATA_KEY] = json.dumps(_lora_metadata(delta), sort_keys=True)
    return atomic_save(tensors, path, meta)


def read_delta(path: str | Path, allow_pickle: bool = False) -> tuple[Delta, dict]:
    """Read a delta file -> (Delta, provenance). Refuses pickle files unless ``allow_pickle``."""
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise DeltaError(f"delta file {p} not found")
    if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
        if not allow_pickle:
            raise DeltaError(f"{p} is a pickle checkpoint, which can run code when loaded: convert it to .safetensors "
                             "or pass allow_pickle=True if you trust it")
        raise DeltaError(f"{p}: pickle deltas are not a semu-diffusion format; convert it to .safetensors")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise DeltaError(f"{p} is not a readable safetensors file ({type(e).__name__}): re-create it with semu-erase") from None
    if PROVENANCE_KEY not in meta:
        raise DeltaError(f"{p} has no {PROVENANCE_KEY} header: it was not written by semu-erase (load plain LoRAs with "
                         "pipe.load_lora_weights)")
    prov = json.loads(meta[PROVENANCE_KEY])
    if prov.get("format_version", 0) > FORMAT_VERSION:
        raise DeltaError(f"{p} has format version {prov['format_version']}; upgrade semu-diffusion to read it")
    d = Delta(format=prov.get("delta_format", "lora"))
    for k, v in tensors.items():
        if not k.startswith(PREFIX):
            raise DeltaError(f"{p}: unexpected key {k!r}")
        body = k[len(PREFIX):]
        if body.endswith(".lora_A.weight"):
            n = body[: -len(".lora_A.weight")]
            B = tensors.get(f"{PREFIX}{n}.lora_B.weight")
            if B is None:
                raise DeltaError(f"{p}: {n} has lora_A but no lora_B; the file is damaged, re-create it")
            d.lora[n] = (B, v)
            d.ranks[n] = int(v.shape[0])
        elif body.endswith(".delta_weight"):
            d.dense[body[: -len(".delta_weight")]] = v
        elif not body.endswith(".lora_B.weight"):
            raise DeltaError(f"{p}: unexpected key {k!r}")
    return d, prov


def validate_delta(unet: nn.Module, delta: Delta, prov: dict, path: str | Path = "delta") -> None:
    """Check that the delta was made for this UNet: module names, shapes and the base fingerprint."""
    for n in delta.modules():
        try:
            w = base_weight(unet, n)
        except AttributeError:
            raise DeltaError(f"{path} targets module {n!r}, which this model does not have: it was made for "
                             f"{prov.get('base_model', 'another model')}") from None
        dw = delta.delta_weight(n)
        if dw.numel() != w.numel() or (n in delta.dense and tuple(dw.shape) != tuple(w.shape)):
            raise DeltaError(f"{path}: shape of {n} does not match this model ({tuple(w.shape)}): it was made for "
                             f"{prov.get('base_model', 'another model')}")
    fp = prov.get("base_fingerprint")
    if fp and fp != fingerprint(unet, delta.modules()):
        raise DeltaError(f"{path} was made for base model {prov.get('base_model')!r} (fingerprint {fp}), not this one: "
                         "erase the concept again on this model")


def load_delta(pipe, path: str | Path, strength: float = 1.0, adapter_name: str | None = None,
               allow_pickle: bool = False) -> str:
    """Validate a delta against ``pipe`` and apply it, scaled by ``strength``. Returns the adapter name.

    LoRA deltas load through diffusers/peft (``set_adapters`` then scales, ``unload_lora_weights`` removes);
    dense deltas are added to the weights (remove them with :func:`remove_delta`).
    """
    delta, prov = read_delta(path, allow_pickle=allow_pickle)
    validate_delta(pipe.unet, delta, prov, path)
    name = adapter_name or f"semu_{Path(path).stem}"
    if delta.lora:
        if delta.dense:  # diffusers refuses files with non-LoRA keys: hand it the LoRA part only
            src = {f"{PREFIX}{n}.{k}.weight": t for n, (B, A) in delta.lora.items() for k, t in (("lora_A", A), ("lora_B", B))}
        else:
            src = str(path)
        pipe.load_lora_weights(src, adapter_name=name)
        pipe.set_adapters([name], adapter_weights=[float(strength)])
    if delta.dense:
        apply_dense(pipe.unet, delta, strength)
    return name


@torch.no_grad()
def apply_dense(unet: nn.Module, delta: Delta, strength: float = 1.0, sign: float = 1.0) -> None:
    for n, dw in delta.dense.items():
        w = base_weight(unet, n)
        w.copy_((w.float() + sign * strength * dw.to(w.device).reshape(w.shape)).to(w.dtype))


def remove_delta(pipe, path: str | Path, strength: float = 1.0, adapter_name: str | None = None) -> None:
    delta, _ = read_delta(path)
    if delta.dense:
        apply_dense(pipe.unet, delta, strength, sign=-1.0)
    if delta.lora:
        pipe.delete_adapters([adapter_name or f"semu_{Path(path).stem}"])


def to_kohya(path: str | Path, out: str | Path) -> Path:
    """Convert a LoRA delta to kohya/A1111/ComfyUI key names (lora_unet_*.lora_down/lora_up/.alpha)."""
    delta, prov = read_delta(path)
    if delta.dense:
        raise DeltaError(f"{path} holds dense updates, which kohya LoRA files cannot express")
    tensors = {}
    for n, (B, A) in delta.lora.items():
        k = "lora_unet_" + n.replace(".", "_")
        tensors[f"{k}.lora_down.weight"] = A.float()
        tensors[f"{k}.lora_up.weight"] = B.float()
        tensors[f"{k}.alpha"] = torch.tensor(float(A.shape[0]))
    meta = {"ss_network_module": "networks.lora", PROVENANCE_KEY: json.dumps(prov, sort_keys=True)}
    return atomic_save(tensors, out, meta)
