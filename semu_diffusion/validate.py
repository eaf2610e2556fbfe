"""The delta validator: one function that every reader of a delta file calls before it touches a model.

:func:`validate_delta` checks, in this order, and raises :class:`~semu_diffusion.delta_format.DeltaError` (a ValueError)
with a one-line message naming the problem and the fix at the first failure:

1. the file: exists, is a file, is safetensors (pickle checkpoints are refused: they can run code), header size
   bounded and consistent with the file (dtypes, shapes and byte ranges of every tensor);
2. the headers: ``semu_provenance`` is a JSON object whose every known field has its type (format version, ranks,
   base signature, ...); ``lora_adapter_metadata`` gives every LoRA module rank r and alpha r (scale 1);
3. the tensors: float dtype, every value finite and below an absolute bound, keys ``unet.<module>.lora_A/B.weight``
   or ``.delta_weight`` (optionally ``.delta_bias``, 1-D, not in a LoRA-only delta), LoRA factors shaped
   A (r, in[, kh, kw]) and B (out, r[, 1, 1]) with matching r;
4. with a pipeline (or UNet): every module exists, shapes match the module (a bias update needs a module with a
   bias of that shape), the update is not absurdly large against the base weight (bias), and the base fingerprint
   matches (required unless ``allow_unverified``).

Nothing is modified: loaders apply a delta only after it passed.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from pathlib import Path

import torch
import torch.nn as nn

from .delta_format import (FORMAT_VERSION, LORA_METADATA_KEY, PREFIX, PROVENANCE_KEY, SAVE_DTYPES, DeltaError,
                           check_values)
from .methods.base import Delta
from .signature import SIGNATURE_VERSION, base_bias, base_weight, check_base

MAX_HEADER_BYTES = 16 * 2**20  # our headers are a few kB (+ ~45 kB of base signature)
MAX_TENSORS = 20_000
MAX_REL_UPDATE = 100.0  # max |dW| may not exceed this many times max |W| of the base weight
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
OTHER_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4,
                "I64": 8, "U64": 8}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_MODULE_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")

_NUM = "number"
_INT = "integer"
# provenance fields and their types (None: may be null); unknown extra fields are allowed
PROVENANCE_SCHEMA: dict[str, tuple] = {
    "format_version": (_INT,), "delta_format": (str,), "toolkit": (str,), "toolkit_version": (str,), "method": (str, None),
    "concepts": ("list[str]", None), "kind": (str, None), "anchor": (str, None), "base_model": (str, None),
    "base_family": (str, None), "base_fingerprint": (str, None), "base_signature": (dict, None), "tau": (_NUM, None),
    "r_min": (_INT, None), "r_max": (_INT, None), "project": (bool, None), "conv_mode": (str, None),
    "ranks": ("dict[str,int]",), "steps": (_INT, None), "lr": (_NUM, None), "batch_size": (_INT, None),
    "forget_n": (_INT, None), "anchor_share": (_NUM, None), "seed": (_INT, None), "mixed_precision": (str, None),
    "forget_prompts": ("list[str]", None), "retain_weight": (_NUM, None), "forget_images": (str, None),
    "anchor_prompts": ("list[str]", None), "curriculum": (bool, None), "method_info": (dict, None),
    "method_options": (dict, None), "kohya_rank": (_INT, None), "save_dtype": (str, None),
}
REQUIRED_FIELDS = ("format_version", "delta_format")
DELTA_FORMATS = ("lora", "dense", "mixed")


def _q(x, n: int = 80) -> str:
    """A value quoted for a one-line message (control characters escaped, long values cut)."""
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


def _is_type(v, t) -> bool:
    if t is None:
        return v is None
    if t == _INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if t == _NUM:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if t == "list[str]":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if t == "dict[str,int]":
        return isinstance(v, dict) and all(isinstance(x, int) and not isinstance(x, bool) for x in v.values())
    return isinstance(v, t)


def _type_name(t) -> str:
    return {None: "null", str: "a string", dict: "an object", bool: "true/false", _INT: "an integer",
            _NUM: "a finite number", "list[str]": "a list of strings",
            "dict[str,int]": "an object of integer ranks"}.get(t, str(t))


def _json(text: str, what: str, path: Path):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise DeltaError(f"{path}: the {what} header is not valid JSON: the file is damaged, re-create it with "
                         "semu-erase") from None


# ----------------------------------------------------------------------------------------------------- file level
def _check_file(p: Path, allow_pickle: bool) -> int:
    if not p.exists():
        raise DeltaError(f"delta file {p} not found: check the path")
    if p.is_dir():
        raise DeltaError(f"{p} is a folder: pass the delta's .safetensors file")
    try:
        with open(p, "rb") as f:
            head = f.read(9)
        size = p.stat().st_size
    except OSError as e:
        raise DeltaError(f"{p} cannot be read ({e.strerror}): check its permissions") from None
    looks_safetensors = len(head) == 9 and head[8:9] == b"{"
    pickled = p.suffix.lower() in PICKLE_SUFFIXES or head.startswith(b"PK\x03\x04") or (
        len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not looks_safetensors)
    if pickled:
        if not allow_pickle:
            raise DeltaError(f"{p} is a pickle checkpoint, which can run code when loaded: convert it to .safetensors "
                             "or pass allow_pickle=True if you trust it")
        raise DeltaError(f"{p}: pickle deltas are not a semu-diffusion format; convert it to .safetensors")
    if size < 8:
        raise DeltaError(f"{p} is not a readable safetensors file (only {size} bytes): re-create it with semu-erase")
    return size


def _read_header(p: Path, size: int) -> tuple[dict, dict]:
    with open(p, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise DeltaError(f"{p} is not a readable safetensors file (header of {n} bytes, limit {MAX_HEADER_BYTES}): "
                             "re-create it with semu-erase")
        if 8 + n > size:
            raise DeltaError(f"{p} is not a readable safetensors file (truncated header): re-create it with semu-erase")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DeltaError(f"{p} is not a readable safetensors file (header is not JSON): re-create it with semu-erase") from None
    if not isinstance(header, dict):
        raise DeltaError(f"{p} is not a readable safetensors file (header is not an object): re-create it with semu-erase")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise DeltaError(f"{p}: the safetensors metadata must map strings to strings: the file is damaged, re-create it")
    if len(header) > MAX_TENSORS:
        raise DeltaError(f"{p} holds {len(header)} tensors (limit {MAX_TENSORS}): not a semu-diffusion delta")
    if meta.get("ss_network_module") or any(k.startswith(("lora_unet_", "lora_te")) for k in header):
        raise DeltaError(f"{p} is a kohya/A1111 LoRA copy: load it with pipe.load_lora_weights, or pass the main delta "
                         "file written by semu-erase")
    body = size - 8 - n
    for k, e in header.items():
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
            raise DeltaError(f"{p}: tensor {_q(k)} has a malformed header entry: the file is damaged, re-create it")
        dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if dt in OTHER_DTYPES:
            raise DeltaError(f"{p}: tensor {_q(k)} has dtype {dt}; delta tensors must be floating point (F32/F16/BF16): "
                             "re-create the delta with semu-erase")
        if dt not in FLOAT_DTYPES:
            raise DeltaError(f"{p}: tensor {_q(k)} has unknown dtype {_q(dt)}: the file is damaged, re-create it")
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)):
            raise DeltaError(f"{p}: tensor {_q(k)} has shape {_q(shape)}; delta tensors have 1 to 4 dimensions")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= body or offs[1] - offs[0] != math.prod(shape) * FLOAT_DTYPES[dt]):
            raise DeltaError(f"{p}: tensor {_q(k)} has byte offsets {_q(offs)} that do not fit its shape or the file: "
                             "the file is damaged or truncated, re-create it")
    return header, meta


# --------------------------------------------------------------------------------------------------- header level
def _check_provenance(meta: dict, p: Path) -> dict:
    if PROVENANCE_KEY not in meta:  # (kohya/A1111 copies were refused with their own message by _read_header)
        raise DeltaError(f"{p} has no {PROVENANCE_KEY} header: it was not written by semu-erase (load plain LoRAs with "
                         "pipe.load_lora_weights)")
    prov = _json(meta[PROVENANCE_KEY], PROVENANCE_KEY, p)
    if not isinstance(prov, dict):
        raise DeltaError(f"{p}: the {PROVENANCE_KEY} header is a JSON {type(prov).__name__}, not an object: the file "
                         "is damaged, re-create it with semu-erase")
    for k in REQUIRED_FIELDS:
        if k not in prov:
            raise DeltaError(f"{p}: the provenance has no {k!r}: the file is damaged, re-create it with semu-erase")
    for k, types in PROVENANCE_SCHEMA.items():
        if k in prov and not any(_is_type(prov[k], t) for t in types):
            raise DeltaError(f"{p}: provenance field {k!r} is {_q(prov[k], 40)}, expected "
                             f"{' or '.join(_type_name(t) for t in types)}: the file is damaged, re-create it")
    v = prov["format_version"]
    if v > FORMAT_VERSION:
        raise DeltaError(f"{p} has format version {v}; upgrade semu-diffusion to read it")
    if v < 1:
        raise DeltaError(f"{p} has format version {v}, which does not exist: the file is damaged, re-create it")
    if prov["delta_format"] not in DELTA_FORMATS:
        raise DeltaError(f"{p}: delta_format {_q(prov['delta_format'], 40)} is not one of {', '.join(DELTA_FORMATS)}")
    if prov.get("base_signature") is not None:
        _check_signature_schema(prov["base_signature"], p)
    return prov


def _check_signature_schema(sig: dict, p: Path) -> None:
    bad = f"{p}: the base signature is damaged"
    if sig.get("version") != SIGNATURE_VERSION or not isinstance(sig.get("modules"), list) or not isinstance(
            sig.get("values"), str):
        raise DeltaError(f"{bad} (version/modules/values): re-create the delta, or pass allow_unverified=True "
                         "(--allow-unverified) after removing it")
    total = 0
    for row in sig["modules"]:
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str) and isinstance(row[1], list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in row[1])
                and isinstance(row[2], str) and row[2] in ("float32", "float16", "bfloat16", "float64")
                and isinstance(row[3], int) and not isinstance(row[3], bool) and 0 <= row[3] <= 1 << 20):
            raise DeltaError(f"{bad} (module entry {_q(row, 60)}): re-create the delta")
        total += row[3]
    try:
        raw = base64.b64decode(sig["values"], validate=True)
    except (binascii.Error, ValueError):
        raise DeltaError(f"{bad} (values are not base64): re-create the delta") from None
    if len(raw) != 4 * total:
        raise DeltaError(f"{bad} ({len(raw)} bytes for {total} values): re-create the delta")
    vals = torch.frombuffer(bytearray(raw), dtype=torch.float32) if raw else torch.zeros(0)
    if not torch.isfinite(vals).all():
        raise DeltaError(f"{bad} (non-finite values): re-create the delta")


def _check_lora_metadata(meta: dict, delta: Delta, p: Path) -> None:
    if not delta.lora:
        return
    if LORA_METADATA_KEY not in meta:
        raise DeltaError(f"{p} has LoRA factors but no {LORA_METADATA_KEY} header, so loaders would guess their scale: "
                         "re-create it with semu-erase")
    md = _json(meta[LORA_METADATA_KEY], LORA_METADATA_KEY, p)
    if not isinstance(md, dict):
        raise DeltaError(f"{p}: the {LORA_METADATA_KEY} header is not a JSON object: re-create the delta")
    pre = PREFIX.rstrip(".") + "."
    r0, a0 = md.get(pre + "r"), md.get(pre + "lora_alpha")
    rp, ap = md.get(pre + "rank_pattern", {}), md.get(pre + "alpha_pattern", {})
    if not (_is_type(r0, _INT) and _is_type(a0, _NUM) and isinstance(rp, dict) and isinstance(ap, dict)):
        raise DeltaError(f"{p}: {LORA_METADATA_KEY} needs integer r, numeric lora_alpha and rank/alpha patterns: "
                         "re-create the delta")
    if md.get(pre + "use_rslora") or md.get(pre + "use_dora"):
        raise DeltaError(f"{p}: {LORA_METADATA_KEY} asks for rsLoRA/DoRA scaling, which semu deltas never use: the "
                         "file was altered, re-create it")
    for n, (_, A) in delta.lora.items():
        r = int(A.shape[0])
        rr, aa = rp.get(n, r0), ap.get(n, a0)
        if rr != r or not _is_type(aa, _NUM) or aa != r:
            raise DeltaError(f"{p}: {LORA_METADATA_KEY} gives {_q(n)} rank {_q(rr, 20)} and alpha {_q(aa, 20)}, but its "
                             f"factors have rank {r} (alpha must equal the rank): the file was altered, re-create it")


# --------------------------------------------------------------------------------------------------- tensor level
def _load_tensors(p: Path, header: dict, prov: dict) -> Delta:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt files
        raise DeltaError(f"{p} is not a readable safetensors file ({type(e).__name__}): re-create it with semu-erase") from None
    if set(tensors) != set(header):
        raise DeltaError(f"{p} is not a readable safetensors file (tensor list): re-create it with semu-erase")
    d = Delta(format=prov["delta_format"])
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for k in sorted(tensors):
        v = tensors[k]  # floating point: _read_header refused every other dtype (and kohya/A1111 lora_unet_ keys)
        body = k[len(PREFIX):]
        suffix = next((s for s in (".lora_A.weight", ".lora_B.weight", ".delta_weight", ".delta_bias")
                       if body.endswith(s)), None) if k.startswith(PREFIX) else None
        if suffix is None:
            raise DeltaError(f"{p}: unexpected key {_q(k)}; semu deltas hold "
                             "unet.<module>.lora_A/lora_B/delta_weight/delta_bias")
        name = body[: -len(suffix)]
        if not _MODULE_RE.match(name):
            raise DeltaError(f"{p}: key {_q(k)} does not name a module: the file is damaged, re-create it")
        check_values({k: v}, p)
        sd = prov.get("save_dtype")
        if sd is not None and SAVE_DTYPES.get(sd) != v.dtype:
            raise DeltaError(f"{p}: tensor {_q(k)} is {v.dtype} but the provenance says save_dtype {_q(sd)}: the file "
                             "was altered, re-create it")
        if suffix == ".delta_bias":
            if v.dim() != 1:
                raise DeltaError(f"{p}: bias update {_q(k)} has shape {tuple(v.shape)}; a .delta_bias is 1-D (the "
                                 "module's bias shape): the file is damaged, re-create it")
            d.dense_bias[name] = v.float()
        elif suffix == ".delta_weight":
            d.dense[name] = v.float()
        else:
            factors.setdefault(name, {})[suffix[1:7]] = v
    for name, fa in factors.items():
        A, B = fa.get("lora_A"), fa.get("lora_B")
        if A is None or B is None:
            raise DeltaError(f"{p}: {_q(name)} has {'lora_A' if A is not None else 'lora_B'} only: the file is "
                             "damaged, re-create it")
        if name in d.dense:
            raise DeltaError(f"{p}: {_q(name)} has both LoRA factors and a dense update: the file is damaged")
        r = int(A.shape[0])
        shape_ok = (A.dim() in (2, 4) and B.dim() in (2, 4) and (A.dim() == 4 or B.dim() == 2) and r >= 1
                    and B.shape[1] == r and (B.dim() == 2 or tuple(B.shape[2:]) == (1, 1)))
        if not shape_ok:
            raise DeltaError(f"{p}: LoRA factors of {_q(name)} have shapes A {tuple(A.shape)}, B {tuple(B.shape)}; the "
                             "contract is A (r, in[, kh, kw]) and B (out, r) with the same r (transposed?): re-create it")
        fan_in = math.prod(A.shape[1:])
        if r > min(int(B.shape[0]), fan_in):
            raise DeltaError(f"{p}: LoRA rank {r} of {_q(name)} exceeds its dimensions (out {B.shape[0]}, in {fan_in}): "
                             "the factors are transposed or damaged; re-create the delta")
        d.lora[name] = (B.float(), A.float())  # fp16/bf16 factors widen exactly; the file keeps its dtype
        d.ranks[name] = r
    if not d.lora and not d.dense and not d.dense_bias:
        raise DeltaError(f"{p} holds no weight update: re-create it with semu-erase")
    if d.format == "lora" and d.dense_bias:
        raise DeltaError(f"{p}: a LoRA delta cannot carry bias updates ({_q(PREFIX + sorted(d.dense_bias)[0] + '.delta_bias')}; "
                         "stock diffusers would refuse the file): remove them, or write the delta as delta_format dense/mixed")
    if d.format == "lora" and d.dense or d.format == "dense" and d.lora:
        raise DeltaError(f"{p}: delta_format {d.format!r} does not match its tensors: the file is damaged, re-create it")
    ranks = prov.get("ranks")
    if ranks and any(ranks.get(n, r) != r for n, r in d.ranks.items()):
        raise DeltaError(f"{p}: the provenance ranks disagree with the LoRA factors: the file was altered, re-create it")
    return d


# ---------------------------------------------------------------------------------------------- against a model
def check_against_unet(unet: nn.Module, delta: Delta, prov: dict, path: str | Path = "delta",
                       allow_unverified: bool = False) -> str:
    """Check ``delta`` against ``unet``: modules exist, shapes match, sizes are sane, the base fingerprint matches.
    Returns how the base was verified ("signature", "legacy" or "unverified")."""
    made_for = prov.get("base_model") or "another model"
    for n in delta.modules():
        try:
            w = base_weight(unet, n)
        except AttributeError:
            raise DeltaError(f"{path} targets module {_q(n)}, which this model does not have: it was made for "
                             f"{made_for}") from None
        if not isinstance(w, torch.Tensor) or w.dim() not in (2, 4):
            raise DeltaError(f"{path} targets {_q(n)}, which is not a linear or convolution layer here")
        if n in delta.lora:
            B, A = delta.lora[n]
            want_a = (A.shape[0], *w.shape[1:])
            ok = tuple(A.shape) == tuple(want_a) and B.shape[0] == w.shape[0]
            if not ok:
                raise DeltaError(f"{path}: LoRA factors of {n} (A {tuple(A.shape)}, B {tuple(B.shape)}) do not fit this "
                                 f"model's weight {tuple(w.shape)} (A must be {tuple(want_a)}, B ({w.shape[0]}, r)): it "
                                 f"was made for {made_for}")
        elif n in delta.dense and tuple(delta.dense[n].shape) != tuple(w.shape):
            raise DeltaError(f"{path}: shape of {n} {tuple(delta.dense[n].shape)} does not match this model "
                             f"({tuple(w.shape)}): it was made for {made_for}")
        wmax = float(w.detach().abs().max()) if w.numel() else 0.0
        if n in delta.lora or n in delta.dense:
            dmax = float(delta.delta_weight(n).abs().max()) if w.numel() else 0.0
            if dmax > MAX_REL_UPDATE * max(wmax, 1e-3):
                raise DeltaError(f"{path}: the update of {n} reaches {dmax:.3g}, over {MAX_REL_UPDATE:g}x the largest "
                                 f"base weight ({wmax:.3g}): the delta is damaged or for another model; re-create it")
        if n in delta.dense_bias:
            _check_bias(unet, n, delta.dense_bias[n], wmax, path, made_for)
    sig = prov.get("base_signature")
    if sig is not None:
        covered = {row[0] for row in sig["modules"]}
        missing = [n for n in delta.modules() if n not in covered]
        if missing:
            raise DeltaError(f"{path}: the base signature does not cover {_q(missing[0])}: the file was altered, "
                             "re-create it")
    how = check_base(unet, prov, delta.modules(), path)
    if how == "unverified" and not allow_unverified:
        raise DeltaError(f"{path} has no base fingerprint, so nothing shows it was made for this model: re-create it "
                         "with semu-erase, or pass allow_unverified=True (--allow-unverified) if you trust it")
    return how


def _check_bias(unet: nn.Module, n: str, db: torch.Tensor, wmax: float, path, made_for: str) -> None:
    key = f"{PREFIX}{n}.delta_bias"
    b = base_bias(unet, n)
    if b is None:
        raise DeltaError(f"{path}: {key} updates a bias, but module {n} has none in this model: remove that key or "
                         f"use the model the delta was made for ({made_for})")
    if tuple(db.shape) != tuple(b.shape):  # (db is 1-D: _load_tensors refused any other .delta_bias)
        raise DeltaError(f"{path}: {key} has shape {tuple(db.shape)}, but the bias of {n} has {tuple(b.shape)} here: "
                         f"use the model the delta was made for ({made_for}) or re-create the delta")
    bmax = float(b.detach().abs().max()) if b.numel() else 0.0
    dmax = float(db.abs().max()) if db.numel() else 0.0
    if dmax > MAX_REL_UPDATE * max(bmax, wmax, 1e-3):
        raise DeltaError(f"{path}: the bias update of {n} reaches {dmax:.3g}, over {MAX_REL_UPDATE:g}x the largest base "
                         f"bias or weight ({max(bmax, wmax):.3g}): the delta is damaged or for another model; re-create it")


def validate_delta(path: str | Path, pipe=None, *, allow_unverified: bool = False,
                   allow_pickle: bool = False) -> tuple[Delta, dict]:
    """Validate a delta file, and against ``pipe`` (a diffusers pipeline or its UNet) if given -> (Delta, provenance).

    Raises :class:`DeltaError` (one line: the problem and the fix) on the first failed check; never modifies
    ``pipe``. Without ``pipe`` a base fingerprint must still be present unless ``allow_unverified``.
    """
    if not isinstance(path, (str, Path)) or not str(path):
        raise DeltaError(f"delta path must be a file path, got {_q(path, 40)}")
    p = Path(path)
    size = _check_file(p, allow_pickle)
    header, meta = _read_header(p, size)
    prov = _check_provenance(meta, p)
    delta = _load_tensors(p, header, prov)
    _check_lora_metadata(meta, delta, p)
    if pipe is not None:
        unet = getattr(pipe, "unet", pipe)
        if not isinstance(unet, nn.Module):
            raise DeltaError(f"cannot check {p} against {type(pipe).__name__}: pass a diffusers pipeline or its UNet")
        check_against_unet(unet, delta, prov, p, allow_unverified=allow_unverified)
    elif not allow_unverified and not (prov.get("base_signature") or prov.get("base_fingerprint")):
        raise DeltaError(f"{p} has no base fingerprint, so nothing shows which model it was made for: re-create it "
                         "with semu-erase, or pass allow_unverified=True (--allow-unverified) if you trust it")
    return delta, prov
