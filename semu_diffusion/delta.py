"""The delta file: one .safetensors that stock diffusers loads with ``pipe.load_lora_weights``.

Keys ``unet.<module>.lora_A.weight`` / ``unet.<module>.lora_B.weight`` (fp32, or fp16/bf16 with ``save_dtype``), the ``lora_adapter_metadata``
header (peft LoraConfig with rank_pattern / alpha_pattern, alpha = rank so the scale is 1), and
``semu_provenance`` (JSON): format version, method, concept(s), anchor, base model id and fingerprint, tau,
ranks, steps, seed, toolkit version. Dense updates (per-channel SEMU, masked methods) are stored as
``unet.<module>.delta_weight`` (and bias updates, e.g. of ``esd-*-paper``, as the 1-D ``unet.<module>.delta_bias``)
and load only with :func:`load_delta`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .atomic import atomic_path
from .methods.base import Delta

FORMAT_VERSION = 1
PROVENANCE_KEY = "semu_provenance"
LORA_METADATA_KEY = "lora_adapter_metadata"  # what diffusers reads
PREFIX = "unet."
MAX_ABS_VALUE = 1e4  # no factor or weight update of a diffusion UNet comes near this (refused on write and on read)
MAX_STRENGTH = 10.0  # |strength| of load_delta and |weight| of a merged or stacked delta: the documented range


class DeltaError(ValueError):
    """A delta file that cannot be used with this base model; the message (one line) says why and what to do."""

    def __init__(self, msg: object = ""):
        super().__init__(str(msg).replace("\r", "\\r").replace("\n", "\\n"))  # one line, even for odd file names


class Fingerprint(str):
    """The short fingerprint id (a hex string, what reports show) carrying the base signature it summarises.

    :func:`save_delta` stores ``.signature`` (a sample of the base weights) next to the id, so a delta written from
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


def check_strength(value, what: str = "strength") -> float:
    """A delta's scale: a finite number in [-MAX_STRENGTH, MAX_STRENGTH] (beyond it a UNet's outputs blow up)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DeltaError(f"{what} must be a finite number, got {value!r}")
    if abs(value) > MAX_STRENGTH:
        raise DeltaError(f"{what} {value:g} is out of range: use a value in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}] "
                         "(1 = the erasure as trained)")
    return float(value)


def check_values(tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """Every delta tensor finite and within MAX_ABS_VALUE: the one value check of the writers and the reader."""
    for k, v in tensors.items():
        if not v.numel():
            continue
        vf = v.float() if v.dtype != torch.float64 else v
        if not torch.isfinite(vf).all():
            raise DeltaError(f"{where}: tensor {k[:80]!r} contains NaN or Inf values: the training diverged or the "
                             "file is damaged; re-create it (lower --lr)")
        m = float(vf.abs().max())
        if m > MAX_ABS_VALUE:
            raise DeltaError(f"{where}: tensor {k[:80]!r} has values up to {m:.3g} (limit {MAX_ABS_VALUE:g}): no "
                             "weight update is that large (a diverged training or a huge merge weight)")


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


SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    from .validate import validate_delta as _validate

    return _validate(path, None, allow_unverified=True, allow_pickle=allow_pickle)


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
    from .validate import validate_delta as _validate

    strength = check_strength(strength)
    delta, prov = _validate(path, pipe, allow_unverified=allow_unverified, allow_pickle=allow_pickle)
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
    from .validate import validate_delta as _validate

    delta, prov = _validate(path, None, allow_unverified=allow_unverified)
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
