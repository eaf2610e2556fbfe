"""Several deltas at once: stack them in one pipeline (:func:`load_deltas`) or fold them into one file
(:func:`merge_deltas`).

Folding is exact for LoRA factors: the merged update of a module is sum_i w_i B_i A_i = [w_1 B_1 | ... | w_k B_k]
[A_1; ...; A_k], a LoRA of rank sum_i r_i (when that exceeds the module's full rank, the sum is refactored by an
exact SVD at full rank). Dense updates are summed; a module that is LoRA in one file and dense in another becomes
dense. Bias updates (``.delta_bias``, e.g. of ``esd-*-paper``) are summed too; a merge that holds any is written as
a dense or mixed delta (the LoRA part stays LoRA). Every source file is validated first; nothing is written or changed when one fails.
"""
from __future__ import annotations

import base64
from pathlib import Path

import torch

from .delta import DeltaError, apply_dense, check_strength, save_delta, signature_id
from .methods.base import Delta


def _check_weights(paths, weights, what: str = "weights") -> list[float]:
    if isinstance(paths, (str, Path)) or not isinstance(paths, (list, tuple)):
        raise DeltaError("pass the delta files as a list of paths, e.g. [\"a.safetensors\", \"b.safetensors\"]")
    if not paths:
        raise DeltaError("no delta files given: pass at least one path")
    if weights is None:
        return [1.0] * len(paths)
    if isinstance(weights, (int, float)) and not isinstance(weights, bool):
        weights = [weights] * len(paths)
    weights = list(weights)
    if len(weights) != len(paths):
        raise DeltaError(f"{len(paths)} delta files but {len(weights)} {what}: give one weight per file")
    return [check_strength(w, "every weight") for w in weights]


def _check_distinct(paths) -> None:
    seen = set()
    for p in paths:
        k = str(Path(p).resolve())
        if k in seen:
            raise DeltaError(f"{p} is listed twice: list each delta once (use its weight to scale it)")
        seen.add(k)


def load_deltas(pipe, paths, weights=None, adapter_names=None, allow_unverified: bool = False) -> list[str]:
    """Validate every delta against ``pipe``, then apply them all, each scaled by its weight. Returns adapter names.

    LoRA deltas load as named diffusers adapters, activated together with one ``set_adapters(names, weights)``
    (adapters loaded before this call are deactivated); dense deltas are added to the weights. Nothing changes
    unless every file passes.
    """
    from .delta import apply_delta, loaded_adapters
    from .validate import validate_delta

    weights = _check_weights(paths, weights)
    _check_distinct(paths)
    names = list(adapter_names) if adapter_names is not None else [f"semu_{Path(p).stem}" for p in paths]
    if len(names) != len(paths):
        raise DeltaError(f"{len(paths)} delta files but {len(names)} adapter names: give one name per file")
    if len(set(names)) != len(names):
        raise DeltaError(f"adapter names must be distinct, got {names}: pass adapter_names")
    existing = loaded_adapters(pipe)
    taken = [n for n in names if n in existing]
    if taken:
        raise DeltaError(f"an adapter named {taken[0]!r} is already loaded: pass other adapter_names or unload it first")
    deltas = [validate_delta(p, pipe, allow_unverified=allow_unverified)[0] for p in paths]  # all checks first
    lora = []
    for p, w, n, d in zip(paths, weights, names, deltas):
        apply_delta(pipe, d, p, w, n)
        if d.lora:
            lora.append((n, w))
    if lora:
        pipe.set_adapters([n for n, _ in lora], adapter_weights=[w for _, w in lora])
    return names


# ---- merge -------------------------------------------------------------------------------------------------------
def _merge_signatures(provs: list[dict], paths) -> dict | None:
    """Union of the sources' base signatures (one row per module); overlapping modules must agree exactly."""
    rows, vals, seen = [], [], {}
    for prov, p in zip(provs, paths):
        sig = prov.get("base_signature")
        if sig is None:
            continue
        raw = base64.b64decode(sig["values"])
        v = torch.frombuffer(bytearray(raw), dtype=torch.float32) if raw else torch.zeros(0)
        off = 0
        for row in sig["modules"]:
            k = int(row[3])
            part = v[off: off + k].clone()
            off += k
            key = row[0]
            if key in seen:
                r0, v0 = seen[key]
                if r0[1] != row[1] or (r0[3] == k and not torch.equal(v0, part)):
                    raise DeltaError(f"{p} was made for another base model than {paths[0]} (module {key} differs): "
                                     "merge only deltas of the same base model")
                continue
            seen[key] = (row, part)
            rows.append(row)
            vals.append(part)
    if not rows:
        return None
    v = torch.cat(vals)
    return {"version": provs[0]["base_signature"]["version"] if provs[0].get("base_signature") else 2,
            "modules": rows, "values": base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii")}


def merge_delta_objects(deltas: list[Delta], weights: list[float], max_rank: int | None = None) -> tuple[Delta, dict]:
    """Fold ``deltas`` (weighted) into one Delta -> (delta, info). Exact unless ``max_rank`` truncates a module
    (info["max_rel_error"] then gives the largest relative Frobenius error)."""
    out = Delta(format="lora")
    mods = sorted(set().union(*[set(d.lora) | set(d.dense) for d in deltas]))
    worst, refactored = 0.0, []
    for n in sorted(set().union(*[set(d.dense_bias) for d in deltas])):
        shapes = {tuple(d.dense_bias[n].shape) for d in deltas if n in d.dense_bias}
        if len(shapes) > 1:
            raise DeltaError(f"the bias updates of {n} have different shapes {sorted(shapes)} in the deltas: merge only "
                             "deltas of one base model")
        out.dense_bias[n] = sum(w * d.dense_bias[n].float() for d, w in zip(deltas, weights)
                                if n in d.dense_bias).contiguous()
    for n in mods:
        parts = [(d, w) for d, w in zip(deltas, weights) if n in d.lora or n in d.dense]
        if all(n in d.lora for d, _ in parts):
            Bs = [w * d.lora[n][0].float() for d, w in parts]
            As = [d.lora[n][1].float() for d, _ in parts]
            B, A = torch.cat(Bs, 1), torch.cat(As, 0)
            r = A.shape[0]
            full = min(B.shape[0], A[0].numel())
            cap = min(full, max_rank) if max_rank else full
            if r > cap:  # refactor: exact at full rank, truncated (lossy) under max_rank
                dw = B.reshape(B.shape[0], -1) @ A.reshape(r, -1)
                U, S, Vh = torch.linalg.svd(dw.double(), full_matrices=False)
                Bn = (U[:, :cap] * S[:cap]).float()
                An = Vh[:cap].float()
                err = float(S[cap:].pow(2).sum().sqrt() / S.pow(2).sum().sqrt().clamp_min(1e-30))
                worst = max(worst, err)
                refactored.append(n)
                B = Bn.reshape(B.shape[0], cap, *B.shape[2:])
                A = An.reshape(cap, *A.shape[1:])
            out.lora[n] = (B.contiguous(), A.contiguous())
            out.ranks[n] = int(A.shape[0])
        else:
            shape = None
            acc = None
            for d, w in parts:
                if n in d.dense:
                    dw = d.dense[n].float()
                    shape = dw.shape
                else:
                    B, A = d.lora[n]
                    dw = (B.reshape(B.shape[0], -1).float() @ A.reshape(A.shape[0], -1).float())
                    shape = shape or (B.shape[0], *A.shape[1:])
                acc = w * dw.reshape(-1) if acc is None else acc + w * dw.reshape(-1)
            out.dense[n] = acc.reshape(shape).contiguous()
    if out.dense or out.dense_bias:
        out.format = "mixed" if out.lora else "dense"
    return out, {"refactored": refactored, "max_rel_error": worst, "exact": worst <= 1e-6}


def merge_deltas(paths, out, weights=None, max_rank: int | None = None, allow_unverified: bool = False,
                 pipe=None) -> Path:
    """Fold the delta files ``paths`` (each scaled by its weight, default 1) into one file ``out``.

    The result equals loading the sources together (stacked adapters) up to float rounding; the provenance lists
    every source's concepts, anchor, method and weight. ``max_rank`` caps each module's rank (lossy; the error is
    recorded). With ``pipe`` every source is also checked against that model.
    """
    from .config import ConfigError, check_output_path
    from .validate import validate_delta

    weights = _check_weights(paths, weights)
    _check_distinct(paths)
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise DeltaError(f"max_rank must be a whole number >= 1, got {max_rank!r}")
    try:
        check_output_path("out", out)
    except ConfigError as e:
        raise DeltaError(str(e)) from None
    outp = Path(out).resolve()
    if any(Path(p).resolve() == outp for p in paths):
        raise DeltaError(f"--out {out} is one of the inputs: write the merge to a new file")
    read = [validate_delta(p, pipe, allow_unverified=allow_unverified) for p in paths]
    deltas, provs = [d for d, _ in read], [pr for _, pr in read]
    bases = {pr.get("base_model") for pr in provs if pr.get("base_model")}
    if len(bases) > 1:
        raise DeltaError(f"the deltas were made for different base models ({', '.join(sorted(bases))}): merge only "
                         "deltas of one base model")
    sig = _merge_signatures(provs, [str(p) for p in paths])
    merged, info = merge_delta_objects(deltas, weights, max_rank)
    concepts, sources = [], []
    for p, w, pr in zip(paths, weights, provs):
        cs = pr.get("concepts") or []
        concepts += [c for c in cs if c not in concepts]
        sources.append({"file": Path(p).name, "weight": w, "concepts": cs, "anchor": pr.get("anchor"),
                        "anchors": pr.get("anchors") or [pr.get("anchor")] * len(cs), "method": pr.get("method"),
                        "base_fingerprint": pr.get("base_fingerprint"), "rank_sum": sum((pr.get("ranks") or {}).values())})
    from . import __version__

    first = provs[0]
    methods = sorted({s["method"] or "?" for s in sources})
    prov = {
        "toolkit": "semu-diffusion", "toolkit_version": __version__,
        "method": methods[0] if len(methods) == 1 else "merge",
        "concepts": concepts, "anchors": [a for s in sources for a in s["anchors"]],
        "anchor": ", ".join(dict.fromkeys(str(a) for s in sources for a in s["anchors"])),
        "kind": first.get("kind") if len({pr.get("kind") for pr in provs}) == 1 else None,
        "base_model": first.get("base_model"), "base_family": first.get("base_family"),
        "ranks": dict(merged.ranks), "merge": {"sources": sources, "weights": weights, "exact": info["exact"],
                                                "max_rank": max_rank, "refactored_modules": info["refactored"],
                                                "max_rel_error": info["max_rel_error"]},
    }
    if sig is not None:
        prov["base_signature"] = sig
        prov["base_fingerprint"] = signature_id(sig)
    return save_delta(out, merged, prov, keep_local_paths=False)


def unload_deltas(pipe, paths, weights=None, adapter_names=None) -> None:
    """Undo :func:`load_deltas` (dense parts subtracted, adapters deleted)."""
    from .delta import read_delta

    weights = _check_weights(paths, weights)
    names = list(adapter_names) if adapter_names is not None else [f"semu_{Path(p).stem}" for p in paths]
    for p, w, n in zip(paths, weights, names):
        d, _ = read_delta(p)
        if d.dense or d.dense_bias:
            apply_dense(pipe.unet, d, w, sign=-1.0)
        if d.lora:
            pipe.delete_adapters([n])
