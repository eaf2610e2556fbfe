"""The base signature: which base weights a delta was made for. A fixed sample of the targeted base weights
(:func:`base_signature`), its short id (:func:`fingerprint`, what provenance records as ``base_fingerprint``) and
the check of a model against them (:func:`check_base`), shared by the writer (:mod:`.delta`) and the validator
(:mod:`.validate`)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn as nn

from .delta_format import DeltaError


class Fingerprint(str):
    """The short fingerprint id (a hex string, what reports show) carrying the base signature it summarises.

    :func:`~semu_diffusion.delta.save_delta` stores ``.signature`` (a sample of the base weights) next to the id, so a delta written from
    a provenance dict whose ``base_fingerprint`` came from :func:`fingerprint` is verifiable in any load dtype.
    """

    signature: dict | None = None


SIGNATURE_VERSION = 2
_SIG_TOTAL, _SIG_MIN, _SIG_MAX = 8192, 64, 1024  # sampled base values: in all, and per module


def base_weight(unet: nn.Module, name: str) -> torch.Tensor:
    """The base weight of a module, also when it is wrapped by a SEMU layer (``.base``) or a peft LoRA layer."""
    m = unet.get_submodule(name)
    m = getattr(m, "base", m)
    m = getattr(m, "base_layer", m)
    return m.weight


def base_bias(unet: nn.Module, name: str) -> torch.Tensor | None:
    """The base bias of a module (None when it has none), also when it is wrapped as in :func:`base_weight`."""
    m = unet.get_submodule(name)
    m = getattr(m, "base", m)
    m = getattr(m, "base_layer", m)
    b = getattr(m, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


def _positions(numel: int, k: int) -> torch.Tensor:
    """``k`` indices spread over a flat tensor: evenly spaced with a deterministic integer jitter."""
    if k >= numel:
        return torch.arange(numel, dtype=torch.int64)
    j = torch.arange(k, dtype=torch.int64)
    span = max(1, numel // k)
    return torch.clamp(j * numel // k + (j * 2654435761) % span, max=numel - 1)


def _per_module(n_modules: int) -> int:
    return max(_SIG_MIN, min(_SIG_MAX, _SIG_TOTAL // max(1, n_modules)))


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def base_signature(unet: nn.Module, modules: list[str]) -> dict:
    """A fixed sample of the targeted base weights, exact in the dtype they are loaded in (stored as fp32)."""
    import base64

    k = _per_module(len(modules))
    rows, vals = [], []
    for name in sorted(modules):
        w = base_weight(unet, name).detach()
        pos = _positions(w.numel(), k)
        vals.append(w.reshape(-1)[pos.to(w.device)].to("cpu", torch.float32))
        rows.append([name, list(w.shape), _dtype_name(w.dtype), int(pos.numel())])
    v = torch.cat(vals) if vals else torch.zeros(0)
    return {"version": SIGNATURE_VERSION, "modules": rows,
            "values": base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii")}


def signature_id(sig: dict) -> str:
    """The short id of a base signature (what ``base_fingerprint`` records)."""
    h = hashlib.sha256(json.dumps(sig["modules"]).encode())
    h.update(sig["values"].encode())
    return h.hexdigest()[:32]


def fingerprint(unet: nn.Module, modules: list[str], samples: int | None = None) -> Fingerprint:
    """Fingerprint of the targeted base weights: a short id (names, shapes, dtype, sampled values) that carries the
    full :func:`base_signature`; :func:`check_base` compares signatures independently of fp32/fp16/bf16 loads."""
    sig = base_signature(unet, modules)
    fp = Fingerprint(signature_id(sig))
    fp.signature = sig
    return fp


def legacy_fingerprint(unet: nn.Module, modules: list[str], samples: int = 4096) -> str:
    """The format-1 fingerprint (a hash of values rounded to fp16): checks deltas written before signatures."""
    h = hashlib.sha256()
    for name in sorted(modules):
        try:
            w = base_weight(unet, name)
        except AttributeError:
            h.update(f"{name}:missing".encode())
            continue
        flat = w.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        sub = torch.cat([flat[:samples], flat[::step][:samples]]).to("cpu", torch.float16)
        h.update(f"{name}:{tuple(w.shape)}".encode())
        h.update(sub.numpy().tobytes())
    return h.hexdigest()[:32]


def _half_ulp(m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half the spacing of ``dtype`` at magnitude ``m`` (float64), i.e. the largest round-to-nearest error there."""
    fi = torch.finfo(dtype)
    _, e = torch.frexp(m)
    low = math.log2(fi.tiny)  # subnormals (and zero) share the spacing of the lowest normal binade
    e = torch.where(m > 0, e.to(torch.float64) - 1, torch.full_like(m, low)).clamp(min=low)
    return torch.exp2(e) * (fi.eps / 2)


def _decode_dtype(name: str) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise DeltaError(f"base signature names an unknown dtype {name!r}: the file is damaged, re-create it")
    return dt


def check_base(unet: nn.Module, prov: dict, modules: list[str], path: str | Path = "delta") -> str:
    """Verify that ``unet`` is the base the delta was made for; raise DeltaError if not. Returns how it was checked.

    Signature (format 2): every sampled value must agree with the stored one within the rounding of the two dtypes
    involved (half a unit in the last place of each; bit-exact when both dtypes are the same): the same weights
    loaded in fp32, fp16 or bf16 always agree, while a changed base is caught down to the rounding of the dtypes
    (1e-5 relative noise on fp32 weights is refused in every pair except fp16 against bf16, where the rounding
    of one hides it; changes of 1e-3 are refused there too).
    """
    import base64

    other = prov.get("base_model") or "another model"
    sig = prov.get("base_signature")
    if sig is None:
        fp = prov.get("base_fingerprint")
        if not fp:
            return "unverified"
        if fp == legacy_fingerprint(unet, modules):
            return "legacy"
        hint = ("; this delta predates dtype-independent fingerprints and checks only in fp32/fp16: load the model in "
                "torch.float16 or torch.float32" if base_weight(unet, modules[0]).dtype == torch.bfloat16 else "") if modules else ""
        raise DeltaError(f"{path} was made for base model {other!r} (fingerprint {fp}), not this one: erase the "
                         f"concept again on this model{hint}")
    rows = sig["modules"]
    raw = base64.b64decode(sig["values"], validate=True)
    stored = torch.frombuffer(bytearray(raw), dtype=torch.float32).to(torch.float64) if raw else torch.zeros(0, dtype=torch.float64)
    if stored.numel() != sum(int(r[3]) for r in rows):
        raise DeltaError(f"{path}: the base signature is damaged (value count): re-create the delta")
    bad, worst, where, off = 0, 0.0, "", 0
    for name, shape, dname, k in rows:
        s = stored[off: off + k]
        off += k
        try:
            w = base_weight(unet, name).detach()
        except AttributeError:
            raise DeltaError(f"{path} was made for {other!r}: this model has no module {name!r}") from None
        if list(w.shape) != list(shape):
            raise DeltaError(f"{path} was made for {other!r}: {name} has shape {tuple(w.shape)} here, {tuple(shape)} there")
        pos = _positions(w.numel(), int(k))
        if pos.numel() != k:
            raise DeltaError(f"{path}: the base signature is damaged ({name}): re-create the delta")
        cur = w.reshape(-1)[pos.to(w.device)].to("cpu", torch.float64)
        m = torch.maximum(s.abs(), cur.abs())
        ds = _decode_dtype(dname)
        tol = _half_ulp(m, ds) + _half_ulp(m, w.dtype)
        diff = (s - cur).abs()
        off_ = ~(diff <= tol)  # NaN counts as a mismatch
        if ds == w.dtype:  # the same rounding of the same weights is bit-exact
            off_ |= diff > 0
        elif ds != torch.float32 and w.dtype != torch.float32:  # fp16 vs bf16: the two intervals cannot just touch
            off_ |= diff >= tol
        if off_.any():
            bad += int(off_.sum())
            rel = float((diff[off_] / m[off_].clamp_min(1e-30)).nan_to_num(float("inf")).max())
            if rel >= worst:
                worst, where = rel, name
    if bad:
        raise DeltaError(f"{path} was made for base model {other!r}, not this one ({bad} of {len(stored)} sampled base "
                         f"weights differ beyond dtype rounding, up to {worst:.1e} relative in {where}): erase the "
                         "concept again on this model")
    return "signature"
