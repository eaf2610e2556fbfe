"""The delta file: one .safetensors that stock diffusers loads with ``pipe.load_lora_weights``.

Keys ``unet.<module>.lora_A.weight`` / ``unet.<module>.lora_B.weight`` (fp32, or fp16/bf16 with ``save_dtype``), the ``lora_adapter_metadata``
header (peft LoraConfig with rank_pattern / alpha_pattern, alpha = rank so the scale is 1), and
``semu_provenance`` (JSON): format version, method, concept(s), anchor, base model id and fingerprint, tau,
ranks, steps, seed, toolkit version. Dense updates (per-channel SEMU, masked methods) are stored as
``unet.<module>.delta_weight`` (and bias updates, e.g. of ``esd-*-paper``, as the 1-D ``unet.<module>.delta_bias``)
and load only with :func:`load_delta`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .atomic import atomic_path
# the format's constants, error and value checks, and the base signature: importable from here as before
from .delta_format import (FORMAT_VERSION, LORA_METADATA_KEY, MAX_ABS_VALUE, MAX_STRENGTH, PREFIX,  # noqa: F401
                           PROVENANCE_KEY, SAVE_DTYPES, DeltaError, check_strength, check_values)
from .methods.base import Delta
from .signature import (SIGNATURE_VERSION, Fingerprint, base_bias, base_signature, base_weight,  # noqa: F401
                        check_base, fingerprint, legacy_fingerprint, signature_id)
from .validate import validate_delta


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
    with atomic_path(p, keep_suffix=False) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        _fix_header_order(tmp)
    return p


def _fix_header_order(path: Path) -> None:
    """Rewrite a safetensors header in one fixed order: ``__metadata__`` first with its keys sorted, then the
    tensors by data offset. safetensors keeps the metadata in a hash map, so its key order changes from one process
    to the next; with this the same delta is the same bytes (same sha256) in every run. The data is untouched."""
    import struct

    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
        meta = header.pop("__metadata__", None)
        fixed = {"__metadata__": dict(sorted(meta.items()))} if meta else {}
        fixed.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[0])))
        text = json.dumps(fixed, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        f.seek(0)
        f.write(struct.pack("<Q", len(text)) + text + body)
        f.truncate()


LOCAL_PATHS_ENV = "SEMU_PROVENANCE_LOCAL_PATHS"  # "1": keep local paths in the provenance (opt-in)
_PATH_FIELDS = ("base_model", "forget_images", "forget_prompts_file", "retain_prompts_file", "prompts_file")


def _looks_local(v: str) -> bool:
    return (os.path.isabs(v) or v.startswith(("~", "./", "../", ".\\")) or "\\" in v
            or (os.sep in v and v.count("/") != 1)) and "\n" not in v


def public_provenance(prov: dict, keep_local_paths: bool | None = None) -> dict:
    """The provenance without anything machine-specific: local paths become the hub id (for a Hugging Face cache
    folder) or the folder/file name. ``keep_local_paths`` (or ``SEMU_PROVENANCE_LOCAL_PATHS=1``) opts out."""
    from .loading import model_label

    if keep_local_paths is None:
        keep_local_paths = os.environ.get(LOCAL_PATHS_ENV, "") == "1"
    if keep_local_paths:
        return dict(prov)

    def clean(key, v):
        if isinstance(v, str):
            if key in _PATH_FIELDS and v and (_looks_local(v) or os.path.exists(v)) and v != "toy":
                return model_label(v) if key == "base_model" else Path(v.rstrip("/\\")).name
            if os.path.isabs(v) and "\n" not in v and len(v) < 4096 and os.path.exists(v):
                return Path(v).name
            return v
        if isinstance(v, dict):
            return {k: clean(k, x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(None, x) for x in v]
        return v

    return {k: clean(k, v) for k, v in prov.items()}


def save_delta(path: str | Path, delta: Delta, provenance: dict, keep_local_paths: bool | None = None,
               dtype: str = "fp32") -> Path:
    """Write ``delta`` with its provenance (local paths removed unless ``keep_local_paths``; the base signature
    carried by a :class:`Fingerprint` in ``base_fingerprint`` is stored as ``base_signature``).

    ``dtype`` ("fp32", "fp16", "bf16"): the dtype every stored tensor is rounded to (recorded as the provenance's
    ``save_dtype``); a factor that overflows it is refused."""
    if dtype not in SAVE_DTYPES:
        raise DeltaError(f"save dtype must be one of {', '.join(SAVE_DTYPES)}, got {dtype!r}")
    dt = SAVE_DTYPES[dtype]
    tensors: dict[str, torch.Tensor] = {}

    def cast(key: str, t: torch.Tensor) -> torch.Tensor:
        out = t.float().cpu().to(dt).contiguous()
        if dt != torch.float32 and not bool(torch.isfinite(out).all()):
            raise DeltaError(f"{key} overflows {dtype} (largest |value| {float(t.abs().max()):.3g}): save with "
                             "--save-dtype fp32 or bf16")
        return out

    for n, (B, A) in delta.lora.items():
        tensors[f"{PREFIX}{n}.lora_A.weight"] = cast(f"{n}.lora_A", A)
        tensors[f"{PREFIX}{n}.lora_B.weight"] = cast(f"{n}.lora_B", B)
    for n, dw in delta.dense.items():
        tensors[f"{PREFIX}{n}.delta_weight"] = cast(f"{n}.delta_weight", dw)
    if delta.dense_bias and delta.format == "lora":
        raise DeltaError("a LoRA delta cannot carry bias updates (stock diffusers must load it): store it as a "
                         "dense or mixed delta")
    for n, db in delta.dense_bias.items():
        tensors[f"{PREFIX}{n}.delta_bias"] = cast(f"{n}.delta_bias", db.reshape(-1))
    check_values(tensors, f"refused to write {Path(path).name}")  # before anything is written
    prov = public_provenance(dict(provenance), keep_local_paths)
    sig = getattr(provenance.get("base_fingerprint"), "signature", None)
    if sig is not None and "base_signature" not in prov:
        prov["base_signature"] = sig
    if isinstance(prov.get("base_fingerprint"), str):
        prov["base_fingerprint"] = str(prov["base_fingerprint"])
    prov.update({"format_version": FORMAT_VERSION, "delta_format": delta.format, "save_dtype": dtype})
    meta = {"format": "pt", PROVENANCE_KEY: json.dumps(prov, sort_keys=True)}
    if delta.lora:
        meta[LORA_METADATA_KEY] = json.dumps(_lora_metadata(delta), sort_keys=True)
    return atomic_save(tensors, path, meta)


def read_delta(path: str | Path, allow_pickle: bool = False) -> tuple[Delta, dict]:
    """Read and check a delta file -> (Delta, provenance), without a base model to compare with.

    Runs every file-level check of :func:`semu_diffusion.validate.validate_delta` (the fingerprint is not required).
    """
    return validate_delta(path, None, allow_unverified=True, allow_pickle=allow_pickle)


def _lora_part(delta: Delta) -> dict[str, torch.Tensor]:
    return {f"{PREFIX}{n}.{k}.weight": t.float().cpu().contiguous()
            for n, (B, A) in delta.lora.items() for k, t in (("lora_A", A), ("lora_B", B))}


def load_delta(pipe, path: str | Path, strength: float = 1.0, adapter_name: str | None = None,
               allow_pickle: bool = False, allow_unverified: bool = False) -> str:
    """Validate a delta against ``pipe`` and apply it, scaled by ``strength``. Returns the adapter name.

    Every check runs before anything changes (:func:`semu_diffusion.validate.validate_delta`); a delta without a
    base fingerprint is refused unless ``allow_unverified``. LoRA deltas load through diffusers/peft
    (``set_adapters`` then scales, ``unload_lora_weights`` removes); dense deltas are added to the weights (remove
    them with :func:`remove_delta`).
    """
    strength = check_strength(strength)
    delta, prov = validate_delta(path, pipe, allow_unverified=allow_unverified, allow_pickle=allow_pickle)
    name = adapter_name or f"semu_{Path(path).stem}"
    if delta.lora and name in loaded_adapters(pipe):
        raise DeltaError(f"an adapter named {name!r} is already loaded: pass another adapter_name or unload it first")
    apply_delta(pipe, delta, path, strength, name)
    return name


def loaded_adapters(pipe) -> set[str]:
    """Names of the LoRA adapters loaded into the pipeline's UNet."""
    try:
        return set(pipe.get_list_adapters().get("unet", []))
    except Exception:  # no adapters loaded yet (older diffusers raise here)
        return set()


def apply_delta(pipe, delta: Delta, path: str | Path, strength: float, name: str) -> None:
    """Apply an already validated delta (read from ``path``): its LoRA part as diffusers adapter ``name`` scaled by
    ``strength``, its dense part (weights and biases) added to the module parameters."""
    if delta.lora:
        if delta.dense or delta.dense_bias:  # diffusers refuses files with non-LoRA keys: hand it the LoRA part, with its metadata header
            from safetensors.torch import save_file

            with tempfile.TemporaryDirectory(prefix="semu-lora-") as td:
                part = Path(td) / "lora.safetensors"
                save_file(_lora_part(delta), str(part),
                          metadata={"format": "pt", LORA_METADATA_KEY: json.dumps(_lora_metadata(delta), sort_keys=True)})
                pipe.load_lora_weights(td, weight_name=part.name, adapter_name=name)
        else:  # folder + weight_name: the form every diffusers >= 0.35 accepts offline
            pipe.load_lora_weights(str(Path(path).parent), weight_name=Path(path).name, adapter_name=name)
        pipe.set_adapters([name], adapter_weights=[float(strength)])
    if delta.dense or delta.dense_bias:
        apply_dense(pipe.unet, delta, strength)


@torch.no_grad()
def apply_dense(unet: nn.Module, delta: Delta, strength: float = 1.0, sign: float = 1.0) -> None:
    """Add ``sign * strength`` times the dense part of ``delta`` (weight updates and bias updates) to ``unet``."""
    biases = {n: base_bias(unet, n) for n in delta.dense_bias}
    for n, b in biases.items():  # before anything changes
        if b is None or b.numel() != delta.dense_bias[n].numel():
            raise DeltaError(f"module {n} has {'no bias' if b is None else 'another bias shape'} for the delta's "
                             f"unet.{n}.delta_bias: validate the delta against this model first "
                             "(semu_diffusion.validate.validate_delta)")
    for n, dw in delta.dense.items():
        w = base_weight(unet, n)
        w.copy_((w.float() + sign * strength * dw.to(w.device).reshape(w.shape)).to(w.dtype))
    for n, b in biases.items():
        db = delta.dense_bias[n]
        b.copy_((b.float() + sign * strength * db.to(b.device).reshape(b.shape)).to(b.dtype))


def remove_delta(pipe, path: str | Path, strength: float = 1.0, adapter_name: str | None = None) -> None:
    """Undo :func:`load_delta` with the same ``strength``: the dense part (weights and biases) is subtracted, the
    LoRA adapter deleted."""
    delta, _ = read_delta(path)
    if delta.dense or delta.dense_bias:
        apply_dense(pipe.unet, delta, strength, sign=-1.0)
    if delta.lora:
        pipe.delete_adapters([adapter_name or f"semu_{Path(path).stem}"])


def to_kohya(path: str | Path, out: str | Path, allow_unverified: bool = False) -> Path:
    """Convert a LoRA delta to kohya/A1111/ComfyUI key names (lora_unet_*.lora_down/lora_up/.alpha).

    Written at one uniform rank (the largest; smaller factors zero-padded, which adds nothing to B @ A) with
    alpha = rank everywhere, so the scale is 1 in every loader, whether or not it matches per-module alphas.
    """
    delta, prov = validate_delta(path, None, allow_unverified=allow_unverified)
    if delta.dense or delta.dense_bias:
        raise DeltaError(f"{path} holds dense updates, which kohya LoRA files cannot express: export a flat SEMU delta")
    if not delta.lora:
        raise DeltaError(f"{path} holds no LoRA factors to export")
    R = max(int(A.shape[0]) for _, A in delta.lora.values())
    tensors = {}
    for n, (B, A) in delta.lora.items():
        r = int(A.shape[0])
        k = "lora_unet_" + n.replace(".", "_")
        down = torch.zeros((R, *A.shape[1:]), dtype=torch.float32)
        down[:r] = A.float()
        up = torch.zeros((B.shape[0], R, *B.shape[2:]), dtype=torch.float32)
        up[:, :r] = B.float()
        tensors[f"{k}.lora_down.weight"] = down
        tensors[f"{k}.lora_up.weight"] = up
        tensors[f"{k}.alpha"] = torch.tensor(float(R))
    prov = dict(prov, kohya_rank=R)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(R), "ss_network_alpha": str(float(R)),
            PROVENANCE_KEY: json.dumps(prov, sort_keys=True)}
    return atomic_save(tensors, out, meta)
