"""Joint multi-concept erasure: N concepts -> ONE delta.

The shared stages run once (one model load, one retain set over the kept concepts, the forget and anchor sets of
all concepts generated in one batched call); each concept gets its own forget gradient, and SEMU builds its
subspace per layer from all of them (``combine``):

- ``"concat"`` (default): U from the SVD of [G_1 | ... | G_N] and V from the SVD of [G_1; ...; G_N] (each G_c
  projected orthogonally to W and scaled to unit norm, so every concept counts the same), rank by the energy
  rule tau on that joint spectrum: the subspace spans the leading directions of every concept.
- ``"sum"``: the SVD of sum_c G_c / ||G_c|| (one joint gradient, concept-balanced).
- ``"stack"``: each concept's own tau-subspace (capped at r_max), stacked and re-orthonormalised.

The joint rank cap is r_max * N**rank_growth (default sqrt(N)). Object concepts without an anchor get the kept
classes in turn as anchors (``anchors="spread"``). Other methods (salun, esd-x, ...) train on the
joint forget set with the concept-balanced summed gradient. See eval/multiconcept.py for the measurements.
"""
from __future__ import annotations

import csv
import io
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .concepts import given_retain_prompts, next_class, norm_name
from .config import ConfigError, config_from_kwargs
from .distributed import gather_shares, is_main, launched, several

COMBINES = ("concat", "sum", "stack")
MAX_CONCEPTS = 128  # one joint delta (100 concepts on 8 GPUs: README); memory is capped by MAX_GRADIENT_GB
MAX_GRADIENT_GB = 16.0  # refuse (before any generation) when the N concepts' forget gradients would exceed this
CSV_COLUMNS = ("concept", "kind", "anchor")
KINDS = ("object", "nudity", "style")


@dataclass(frozen=True)
class ConceptSpec:
    """One concept to erase, with its optional kind and anchor (None: the defaults)."""

    concept: str
    kind: str | None = None
    anchor: str | None = None
    where: str = ""  # "line 3" for concepts read from a file (error messages)


# ---- input --------------------------------------------------------------------------------------------------------
def read_concepts_file(path) -> list[ConceptSpec]:
    """Concepts from a file: one per line, or a CSV whose header names the columns concept[,kind][,anchor].
    Lines starting with # are comments; an empty line is an error (one line, naming it)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--concepts {p} not found: pass a text file with one concept per line")
    if p.is_dir():
        raise ConfigError(f"--concepts {p} is a folder: pass a text file with one concept per line")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--concepts {p} cannot be read as UTF-8 text ({type(e).__name__})") from None
    head_line = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), None)
    if head_line is None:
        raise ConfigError(f"--concepts {p.name} holds no concepts: write one concept per line")
    if "concept" not in [norm_name(c) for c in next(csv.reader([head_line]))]:  # plain text: one concept per line
        lines = text.splitlines()
        while lines and not lines[-1].strip():  # a trailing newline (or several) is not an empty entry
            lines.pop()
        out = []
        for no, ln in enumerate(lines, 1):
            if ln.lstrip().startswith("#"):
                continue
            if not ln.strip():
                raise ConfigError(f"--concepts {p.name}: line {no} is empty: remove it (one concept per line)")
            out.append(ConceptSpec(ln.strip(), where=f"{p.name} line {no}"))
        return out
    reader = csv.reader(io.StringIO(text, newline=""))  # the csv module: quoted cells may hold commas and newlines
    rows = []
    try:
        for cells in reader:
            rows.append((reader.line_num, cells))
    except csv.Error as e:
        raise ConfigError(f"--concepts {p.name}: line {reader.line_num} is not valid CSV ({e})") from None
    while rows and not any(c.strip() for c in rows[-1][1]):  # trailing empty lines
        rows.pop()
    rows = [(no, cells) for no, cells in rows if not (cells and cells[0].lstrip().startswith("#"))]
    for no, cells in rows:
        if not any(c.strip() for c in cells):
            raise ConfigError(f"--concepts {p.name}: line {no} is empty: remove it (one concept per line)")
    head = [norm_name(c) for c in rows[0][1]]
    bad = [c for c in head if c not in CSV_COLUMNS]
    if bad or len(set(head)) != len(head):
        raise ConfigError(f"--concepts {p.name}: header columns must be among {', '.join(CSV_COLUMNS)} (each once), "
                          f"got {', '.join(head)}")
    out = []
    for no, cells in rows[1:]:
        if len(cells) > len(head):
            raise ConfigError(f"--concepts {p.name}: line {no} has {len(cells)} cells for {len(head)} columns: quote "
                              "cells that contain commas")
        rec = {k: (cells[i].strip() if i < len(cells) else "") for i, k in enumerate(head)}
        if not rec["concept"]:
            raise ConfigError(f"--concepts {p.name}: line {no} has an empty concept cell: fill it or remove the line")
        kind = rec.get("kind") or None
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"--concepts {p.name}: line {no}: kind {kind!r} must be one of {', '.join(KINDS)}")
        out.append(ConceptSpec(rec["concept"], kind, rec.get("anchor") or None, where=f"{p.name} line {no}"))
    if not out:
        raise ConfigError(f"--concepts {p.name} has a header but no concepts: add one concept per line")
    return out


def as_specs(concepts) -> list[ConceptSpec]:
    if isinstance(concepts, (str, ConceptSpec)):
        concepts = [concepts]
    out = []
    for c in concepts:
        if isinstance(c, ConceptSpec):
            out.append(c)
        elif isinstance(c, str):
            out.append(ConceptSpec(c))
        elif isinstance(c, dict):
            out.append(ConceptSpec(str(c.get("concept", "")), c.get("kind"), c.get("anchor")))
        else:
            raise ConfigError(f"a concept must be text, got {type(c).__name__}")
    return out


def check_concepts(specs: list[ConceptSpec], anchor: str | None = None, retain_prompts=None) -> list[ConceptSpec]:
    """Every problem of a concept list, before any work: empty or duplicate concepts, unknown kinds, a concept
    that is its own (or another erased concept's) anchor, a retain prompt that names an erased concept."""
    if not specs:
        raise ConfigError("no concepts given: pass --concept (repeatable) or --concepts FILE")
    if len(specs) > MAX_CONCEPTS:
        raise ConfigError(f"{len(specs):,} concepts: one joint delta takes at most {MAX_CONCEPTS} (each holds its own "
                          "forget gradient of every target layer): split them into several runs and stack the deltas "
                          "with semu-merge")
    seen: dict[str, ConceptSpec] = {}
    for s in specs:
        at = f" ({s.where})" if s.where else ""
        if not s.concept or not s.concept.strip():
            raise ConfigError(f"empty concept{at}: every concept must be a word or phrase")
        for what, v in (("concept", s.concept), ("anchor", s.anchor)):
            if v is not None and any(ch in v for ch in "\r\n\t\x00"):
                raise ConfigError(f"{what} {v!r}{at} holds a line break or control character: a concept is one word "
                                  "or phrase on one line")
        if s.kind is not None and s.kind not in KINDS:
            raise ConfigError(f"concept {s.concept!r}{at}: kind {s.kind!r} must be one of {', '.join(KINDS)}")
        k = norm_name(s.concept)
        if k in seen:
            prev = f" ({seen[k].where})" if seen[k].where else ""
            raise ConfigError(f"concept {s.concept!r} is listed twice{prev}{at}: list each concept once")
        seen[k] = s
    for s in specs:
        a = s.anchor if s.anchor is not None else anchor
        at = f" ({s.where})" if s.where else ""
        if a is not None and norm_name(a) == norm_name(s.concept):
            raise ConfigError(f"concept {s.concept!r}{at} is its own anchor: remap it to something else (--anchor or "
                              "the anchor column)")
    for s in specs:
        a = s.anchor if s.anchor is not None else anchor
        at = f" ({s.where})" if s.where else ""
        if a is not None and norm_name(a) in seen:
            raise ConfigError(f"anchor {a!r} of concept {s.concept!r}{at} is itself erased: pick a kept concept as "
                              "its anchor")
    for prompt in given_retain_prompts(retain_prompts, missing_ok=True) or []:  # EraseConfig names a missing file
        low = norm_name(prompt)
        for k, s in seen.items():
            if re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", low):
                raise ConfigError(f"retain prompt {prompt!r} names the erased concept {s.concept!r}: a kept class "
                                  "cannot also be erased; remove it from the retain prompts or from the concepts")
    return specs


# ---- joint subspaces (pure torch) -----------------------------------------------------------------------------------
def _unit(g: torch.Tensor) -> torch.Tensor | None:
    n = g.norm()
    return g / n if n > 0 else None


def joint_subspace(grads: list[torch.Tensor], combine: str = "concat", tau: float = 0.95, r_min: int = 1,
                   r_cap: int | None = None, r_each: int | None = None, weight: torch.Tensor | None = None):
    """One layer's SEMU subspace from the forget gradients of several concepts (see the module doc)."""
    from .svd import Subspace, flatten_weight, project_orthogonal, select_rank

    mats = []
    for g in grads:
        g = g.float()
        if weight is not None:
            g = project_orthogonal(g, weight.float().to(g.device))
        u = _unit(flatten_weight(g))
        if u is not None:
            mats.append(u)
    shape = flatten_weight(grads[0]).shape
    full = min(shape)
    if not mats:  # every gradient is zero: rank r_min along arbitrary axes
        r = min(max(r_min, 0), full)
        eye_u, eye_v = torch.eye(shape[0], r), torch.eye(shape[1], r)
        return Subspace(U=eye_u, V=eye_v, S=torch.zeros(r), rank=r, energy=0.0)
    hi = full if r_cap is None else min(r_cap, full)
    if combine == "sum":
        U, S, Vh = torch.linalg.svd(torch.stack(mats).sum(0), full_matrices=False)
        r = select_rank(S, tau, r_min, hi)
        V = Vh.T
    elif combine == "concat":
        U, S, _ = torch.linalg.svd(torch.cat(mats, 1), full_matrices=False)
        _, Sv, Vh = torch.linalg.svd(torch.cat(mats, 0), full_matrices=False)
        r = max(select_rank(S, tau, r_min, hi), select_rank(Sv, tau, r_min, hi))
        V = Vh.T
    elif combine == "stack":
        us, vs = [], []
        for m in mats:
            Uc, Sc, Vhc = torch.linalg.svd(m, full_matrices=False)
            rc = select_rank(Sc, tau, r_min, r_each)
            us.append(Uc[:, :rc] * Sc[:rc])
            vs.append(Vhc[:rc].T * Sc[:rc])
        U, S, _ = torch.linalg.svd(torch.cat(us, 1), full_matrices=False)
        V, _, _ = torch.linalg.svd(torch.cat(vs, 1), full_matrices=False)
        r = min(sum(x.shape[1] for x in us), hi, U.shape[1], V.shape[1])
    else:
        raise ConfigError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
    r = min(r, U.shape[1], V.shape[1])
    e = S.double() ** 2
    energy = float(e[:r].sum() / e.sum()) if e.sum() > 0 else 0.0
    return Subspace(U=U[:, :r].contiguous(), V=V[:, :r].contiguous(), S=S[:r].clone(), rank=r, energy=energy)


def joint_rank_cap(r_max: int | None, n: int, growth: float = 0.5) -> int | None:
    return None if r_max is None else int(math.ceil(r_max * n ** growth))


def _joint_semu_class():
    from .methods.semu import SEMU

    class JointSEMU(SEMU):
        """SEMU whose subspaces come from several concepts' gradients (``grads[name]`` is a list)."""

        def __init__(self, config=None, combine: str = "concat", rank_cap: int | None = None, **options):
            super().__init__(config, **options)
            self.combine, self.rank_cap = combine, rank_cap

        def setup(self, unet, targets, grads, loss_fn=None, retain_grads=None, consume=False):
            c = self.config
            if grads is None:
                raise ValueError("SEMU needs the forget gradients")
            if c.conv_mode == "per-channel":  # per-channel subspaces: the concept-balanced joint gradient
                summed = {n: sum(g / g.norm().clamp_min(1e-30) for g in grads[n]) for n in targets}
                cfg = replace(c, r_max=self.rank_cap)
                base = SEMU(cfg)
                params = base.setup(unet, targets, summed, retain_grads=retain_grads, consume=True)
                self.layers, self.info = base.layers, base.info
                self.info["combine"] = "sum (per-channel conv mode)"
                return params
            subs = {}
            for n in targets:
                w = unet.get_submodule(n).weight.detach() if c.project else None
                gs = grads.pop(n) if consume else grads[n]
                if self.needs_retain_gradient:  # each concept's gradient without the retain set's directions
                    gs = self.retain_clean(n, gs, w, retain_grads)
                    w = None  # projected already
                subs[n] = joint_subspace(gs, self.combine, c.tau, c.r_min, self.rank_cap, c.r_max, w)
            return self.inject_subspaces(unet, targets, subs, combine=self.combine, rank_cap=self.rank_cap)

    return JointSEMU


# ---- the joint erasure ----------------------------------------------------------------------------------------------
def _default_anchor(spec: ConceptSpec, kind: str, cfg, recipe, erased: set[str], index: int = 0,
                    spread: bool = False) -> str | None:
    if spec.anchor is not None:
        return spec.anchor
    if cfg.anchor is not None:
        return cfg.anchor
    if kind != "object":
        return None  # the kind's default (plan_concept)
    classes = list(recipe.train.get("retain_concepts", []))
    kept = [c for c in classes if norm_name(c) not in erased]
    if cfg.preset == "semu-paper":
        c = next_class(spec.concept, classes, skip=erased)
        if c is not None:
            return c
    cands = list(dict.fromkeys(c for c in list(recipe.train.get("object_anchors") or []) + kept
                               if norm_name(c) not in erased))
    if not cands:
        return ""
    return cands[index % len(cands)] if spread else cands[0]


def _embed_rows(cond_maker, prompts: list[str]) -> dict:
    """Embeddings for a per-row prompt list, each distinct prompt encoded once."""
    uniq = list(dict.fromkeys(prompts))
    e = cond_maker.embed(uniq)
    idx = torch.tensor([uniq.index(p) for p in prompts])
    return {k: v[idx.to(v.device)] for k, v in e.items()}


def erase_concepts(concepts, *, pipe=None, combine: str = "concat", rank_growth: float = 0.5,
                   anchors: str = "spread", progress: bool = True, log=print, **options):
    """Erase every concept in ``concepts`` (strings, dicts or :class:`ConceptSpec`) into ONE delta at ``out``.

    ``options`` are :class:`~semu_diffusion.config.EraseConfig` fields (``anchor`` and ``kind`` are the defaults
    for concepts that give none; ``forget_n`` is per concept). Object concepts without an anchor are remapped to
    the kept classes in turn (``anchors="spread"``: the recipe's anchor classes first, then the other kept
    classes) or all to the first kept one (``"first"``); many concepts remapped to one class teach a generic
    "any shape -> that class" direction that also hits kept classes (eval/results/multiconcept.md). Every input
    problem is raised as a one-line :class:`ConfigError` before the model loads. Returns an :class:`~semu_diffusion.api.EraseResult`.
    """
    from . import api
    from .concepts import concept_kind, warn_unseen_concept
    from .trainer import Conditioner, forget_gradient

    t_all = time.time()
    if launched() and not is_main():
        log = lambda *a, **k: None  # noqa: E731 (one process speaks)
    if "concept" in options:
        raise TypeError("erase_concepts() takes the concepts as its first argument, not concept=")
    if anchors not in ("first", "spread"):
        raise ConfigError(f"anchors must be 'first' or 'spread', got {anchors!r}")
    anchor_policy = anchors
    if combine not in COMBINES:
        raise ConfigError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
    if isinstance(rank_growth, bool) or not isinstance(rank_growth, (int, float)) or not 0 <= rank_growth <= 1:
        raise ConfigError(f"rank_growth must be a number in [0, 1], got {rank_growth!r}")
    specs = check_concepts(as_specs(concepts), options.get("anchor"), options.get("retain_prompts"))
    if len(specs) > 1:
        for k in ("forget_prompts", "forget_images"):
            if options.get(k) is not None:
                raise ConfigError(f"--{k.replace('_', '-')} holds one concept's data: erase several concepts from "
                                  "their templates, or erase that concept alone")
    cfg = config_from_kwargs(concept=specs[0].concept, **options)  # every option checked before the model loads
    run = api.prepare(cfg, pipe=pipe, progress=progress, log=lambda *a: None)
    cfg, recipe, unet, tcfg = run.cfg, run.recipe, run.unet, run.tcfg
    erased = {norm_name(s.concept) for s in specs}
    plans = []
    for i, s in enumerate(specs):
        kind = s.kind or cfg.kind or concept_kind(s.concept)
        a = _default_anchor(s, kind, cfg, recipe, erased, i, anchors == "spread")
        plan = api.concept_plan(cfg, recipe, s.concept, a, kind)
        if plan.anchor and norm_name(plan.anchor) in erased:
            raise ConfigError(f"anchor {plan.anchor!r} of concept {s.concept!r} is itself erased: pick a kept concept")
        plans.append(plan)
    if run.model_id == "toy":
        from .toy import world

        known = world.known_words()
        for p in plans[1:]:
            warn_unseen_concept(p.concept, known)
    if getattr(run.method, "closed_form", False):  # UCE: every concept's prompts and anchors go into one solve per layer
        return _closed_form_concepts(run, plans, t_all, anchor_policy)
    N, m = len(plans), tcfg.forget_n
    grad_gb = N * sum(unet.get_submodule(n).weight.numel() for n in run.names) * 4 / 2**30
    if run.method.needs_gradient and grad_gb > MAX_GRADIENT_GB:  # before any generation
        raise ConfigError(f"{N} concepts x the forget gradient of {len(run.names)} target layers would hold "
                          f"{grad_gb:.1f} GB (the limit is {MAX_GRADIENT_GB:g} GB): erase fewer concepts at once and "
                          "stack the deltas with semu-merge, or narrow --targets")
    log(f"semu-erase: {N} concepts ({'; '.join(f'{p.concept!r} -> {p.anchor!r}' for p in plans)}) method={cfg.method} "
        f"combine={combine if cfg.method == 'semu' else '-'} model={run.model_id} family={recipe.family} "
        f"targets={len(run.names)} device={run.device} forget_n={m} per concept")
    # one method object for all concepts
    if cfg.method == "semu":
        run.method = _joint_semu_class()(run.mcfg, combine=combine, rank_cap=joint_rank_cap(cfg.r_max, N, rank_growth),
                                         **cfg.method_options)
    # ---- stage 1: forget / anchor / retain sets, all concepts in one batched call each
    t0 = time.time()
    f_prompts = [p.forget_prompts[j % len(p.forget_prompts)] for p in plans for j in range(m)]
    a_prompts = [p.anchor_prompts[j % len(p.anchor_prompts)] for p in plans for j in range(m)]
    run.latents = api._own_latents(run, f_prompts, 0, "forget set")
    run.train_latents = run.latents
    n_anchor_each = int(round(tcfg.anchor_share * m)) if tcfg.objective == "remap" else 0
    run.n_anchor = n_anchor_each * N
    af_prompts, aa_prompts = list(f_prompts), list(a_prompts)
    if run.n_anchor:
        extra_a = [p.anchor_prompts[j % len(p.anchor_prompts)] for p in plans for j in range(n_anchor_each)]
        extra_f = [p.forget_prompts[j % len(p.forget_prompts)] for p in plans for j in range(n_anchor_each)]
        extra = api._own_latents(run, extra_a, 13, "anchor set")
        run.train_latents = torch.cat([run.latents, extra.to(run.latents)])
        af_prompts += extra_f
        aa_prompts += extra_a
    cm = Conditioner(run.pipe, run.device)
    run.cond["forget"] = _embed_rows(cm, af_prompts)  # one row per training latent: its own concept's prompt
    run.cond["anchor"] = _embed_rows(cm, aa_prompts)
    rset = None
    if tcfg.retain_weight > 0 or run.method.needs_retain_gradient:
        rset = api.retain_prompt_list(plans, recipe, cfg.retain_prompts)
        run.retain_latents = api._own_latents(run, [rset[i % len(rset)] for i in range(cfg.retain_n or m)], 7,
                                              "retain set")
        run.retain_cond = cm.embed(rset)
    run.stage["forget_set"] = time.time() - t0
    # ---- stage 2: base targets (shared schedule over the joint set)
    api.make_base_targets(run)
    # ---- stage 3: one forget gradient per concept
    t0 = time.time()
    meth = run.method
    if meth.needs_gradient:
        targets = meth.gradient_targets(unet, run.names)

        def concept_gradient(k: int) -> dict:
            sl = slice(k * m, (k + 1) * m)
            ck = {key: v[sl] for key, v in run.cond["forget"].items()}
            return forget_gradient(unet, run.latents[sl], run.acp, ck, run.cond["uncond"], targets, tcfg, run.device,
                                   run.accelerator.autocast, progress=run.progress)

        if several(run.accelerator):  # each process its share of the concepts, then every process all of them
            per = gather_shares(run.accelerator, N, concept_gradient)
        else:
            per = [concept_gradient(k) for k in range(N)]
        if cfg.method == "semu":
            run.grads = {n: [g[n] for g in per] for n in targets}
        else:  # concept-balanced joint gradient
            run.grads = {n: sum(g[n] / g[n].norm().clamp_min(1e-30) for g in per) for n in targets}
        del per
        if meth.needs_retain_gradient:
            api.compute_retain_gradient(run, targets)
    else:
        run.grads = None
    run.stage["gradient"] = time.time() - t0
    # ---- stages 4-6 as in api.erase
    unet_params = sum(p.numel() for p in unet.parameters())
    delta = api.train_and_export(run)
    anchors = [p.anchor for p in plans]
    kinds = [p.kind for p in plans]

    def joint_provenance(prov: dict) -> None:
        prov.update({
            "concepts": [p.concept for p in plans], "anchors": anchors, "kinds": kinds,
            "kind": kinds[0] if len(set(kinds)) == 1 else None,
            "anchor": anchors[0] if len(set(anchors)) == 1 else "; ".join(f"{p.concept} -> {p.anchor}" for p in plans),
            "forget_prompts": [x for p in plans for x in p.forget_prompts],
            "anchor_prompts": [x for p in plans for x in p.anchor_prompts],
            "forget_n": m * N,
            "multi_concept": {"n_concepts": N, "forget_n_per_concept": m, "anchor_latents_per_concept": n_anchor_each,
                              "combine": combine if cfg.method == "semu" else "sum of unit-norm concept gradients",
                              "rank_cap": getattr(meth, "rank_cap", None), "rank_growth": rank_growth,
                              "default_anchors": anchor_policy,
                              "retain_prompts": rset if (rset and not cfg.retain_prompts) else None,
                              "concepts": [{"concept": p.concept, "kind": p.kind, "anchor": p.anchor} for p in plans]},
        })
        prov["choices"]["forget_set"] = (f"generated by the base model (data-free), {m} latents per concept, all concepts "
                                         "in one batched call")

    path, prov = api.write_outputs(run, delta, joint_provenance)
    stats = {
        "concept": ", ".join(p.concept for p in plans), "concepts": [p.concept for p in plans], "anchor": prov["anchor"],
        "anchors": anchors, "combine": prov["multi_concept"]["combine"],
        **api.run_stats(run, meth, delta, path, unet_params, t_all),
    }
    return api.EraseResult(out=path, stats=stats, delta=delta, provenance=prov)


def _closed_form_concepts(run, plans, t_all: float, anchor_policy: str):
    """A closed-form method (UCE) on several concepts at once: the forget prompts of every concept with their paired
    anchor prompts, preserving the prompts kept for all of them, in one edit."""
    from . import api
    from .concepts import ConceptPlan
    from .trainer import Conditioner

    kinds = list(dict.fromkeys(p.kind for p in plans))
    run.plan = ConceptPlan(concept=", ".join(p.concept for p in plans), kind=kinds[0] if len(kinds) == 1 else "mixed",
                           forget_prompts=[x for p in plans for x in p.forget_prompts],
                           anchor_prompts=[x for p in plans for x in p.anchor_prompts],
                           anchor="; ".join(f"{p.concept} -> {p.anchor}" for p in plans))
    c = Conditioner(run.pipe, run.device)
    run.cond["forget"], run.cond["anchor"] = c.embed(run.plan.forget_prompts), c.embed(run.plan.anchor_prompts)

    def joint_provenance(prov: dict) -> None:
        prov.update({"concepts": [p.concept for p in plans], "anchors": [p.anchor for p in plans],
                     "kinds": [p.kind for p in plans],
                     "multi_concept": {"n_concepts": len(plans), "combine": "one closed-form solve over every concept",
                                       "default_anchors": anchor_policy,
                                       "concepts": [{"concept": p.concept, "kind": p.kind, "anchor": p.anchor}
                                                    for p in plans]}})

    res = api.closed_form_erase(run, t_all, plans=plans, extra_provenance=joint_provenance)
    res.stats.update({"concepts": [p.concept for p in plans], "anchors": [p.anchor for p in plans]})
    return res


def erase_concepts_config(concepts, cfg, **kwargs):
    """:func:`erase_concepts` with the options of an :class:`~semu_diffusion.config.EraseConfig` (its ``concept``
    ignored): the form the CLI uses."""
    from dataclasses import fields

    opts = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "concept"}
    return erase_concepts(concepts, **opts, **kwargs)


def concepts_from_cli(repeated: list[str] | None, concepts_file) -> list[ConceptSpec] | None:
    """The concept list of ``semu-erase --concept A --concept B`` and/or ``--concepts FILE`` (None: one concept)."""
    repeated = list(repeated or [])
    if not concepts_file and len(repeated) <= 1:
        return None
    specs = as_specs(repeated) + (read_concepts_file(concepts_file) if concepts_file else [])
    return check_concepts(specs)
