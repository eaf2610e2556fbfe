"""The run that ties prompt sets, generation + cache, judges, features and the report together.

Sharding: the images of a (variant, set) are cut into batches that depend only on the items; process k of N takes
batches k, k+N, ... (generation, judging and features), writes its per-image records to a shard file, and the main
process merges them by image index. Batches are identical to a one-process run, so the merged report is the same.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .cache import ImageCache, generate_batch
from .options import MAX_IMAGES, EvalConfig, EvalOptionError
from .prompts import Item, PromptSet, batches, expand, load_prompt_sets
from .. import atomic


def file_sha(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def variant_names(deltas: list[str]) -> list[tuple[str, str | None]]:
    """("base", None) then one (unique name, path) per delta: the file stem, made unique when two deltas share it."""
    stems = [Path(d).stem for d in deltas]
    out = [("base", None)]
    for d, s in zip(deltas, stems):
        name = s if (stems.count(s) == 1 and s != "base") else f"{s}-{hashlib.sha256(str(Path(d).resolve()).encode()).hexdigest()[:6]}"
        out.append((name, d))
    return out


def _toy_reference(labels: list[str], extractor, cache: Path, n_per: int = 200) -> dict:
    """Features of real toy-world images of the given shapes (random colours), cached in the run's cache folder."""
    from .features import stats

    key = hashlib.sha256(json.dumps([sorted(labels), n_per, extractor.name]).encode()).hexdigest()[:12]
    f = cache / f"ref-toy-{key}.npz"
    if f.exists():
        d = np.load(f)
        return {"mu": d["mu"], "sigma": d["sigma"], "feats": d["feats"]}
    from ..toy.world import real_images

    ims = real_images(labels, n_per)
    if extractor.ref_size != ims.shape[1]:
        from PIL import Image

        from .features import square_resize

        ims = np.stack([square_resize(Image.fromarray(im), extractor.ref_size) for im in ims])
    feats = np.concatenate([extractor.features(ims[i: i + 256]) for i in range(0, len(ims), 256)])
    mu, sigma = stats(feats)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, mu=mu, sigma=sigma, feats=feats)
    return {"mu": mu, "sigma": sigma, "feats": feats}


def _check_forget_label(cfg: EvalConfig, sets: list[PromptSet]) -> None:
    if not cfg.forget_label:
        return
    labels = {lb for ps in sets for lb in ps.label_names()}
    if sets and all(ps.has_labels for ps in sets) and cfg.forget_label not in labels:
        raise EvalOptionError(f"--forget-label {cfg.forget_label!r} is not a label of the prompt sets "
                              f"({', '.join(sorted(labels)[:12])})")


def frozen_parts_id(pipe) -> str:
    """A hash of the parts a delta never changes but that determine the pixels: every weight tensor of the text
    encoder(s) and the VAE (name, shape and up to 2,048 sampled values in fp16, so fp32 and fp16 loads agree)."""
    h = hashlib.sha256()
    for part in ("text_encoder", "text_encoder_2", "vae"):
        m = getattr(pipe, part, None)
        if m is None:
            continue
        for name, p in m.named_parameters():
            flat = p.detach().reshape(-1)
            sub = flat[:: max(1, flat.numel() // 2048)][:2048].to("cpu", torch.float16)
            h.update(f"{part}.{name}:{tuple(p.shape)}".encode())
            h.update(sub.numpy().tobytes())
    return h.hexdigest()[:16]


def run_eval(cfg: EvalConfig, log=print) -> dict:
    """Evaluate the base model and each delta on every prompt set; write report.json/html under ``cfg.out``.
    Returns the report (an empty dict on non-main processes of a sharded run)."""
    from accelerate import PartialState

    from ..delta import fingerprint, load_delta, remove_delta
    from ..loading import load_pipeline
    from ..recipes import recipe_for, select_targets
    from .judges import build_judge

    t_start = time.time()
    cfg.validate()
    import torch

    # on machines without CUDA (or with --device cpu) a multi-process launch is a gloo CPU group
    state = PartialState(cpu=not torch.cuda.is_available() or (cfg.device or "").startswith("cpu"))
    device = cfg.device or (str(state.device) if state.device.type == "cuda" else "cpu")
    # ---- everything that can be refused is checked before the output folder is touched
    sets = load_prompt_sets(cfg.prompt_sets, cfg.filters, cfg.max_prompts)
    _check_forget_label(cfg, sets)
    n_total = sum(len(ps.rows) for ps in sets) * cfg.per_prompt * (1 + len(cfg.deltas))
    if n_total > MAX_IMAGES:
        raise EvalOptionError(f"this run would make {n_total:,} images (> {MAX_IMAGES:,}): lower --per-prompt, "
                              "--max-prompts or split the prompt sets")
    if n_total > 100_000 and state.is_main_process:
        log(f"semu-eval: warning: {n_total:,} images to generate (hours on a GPU); cached images are reused on rerun")
    real_files = None
    if cfg.real_images:
        from .features import list_images

        real_files = list_images(cfg.real_images)
    judges = [build_judge(s, device, nudenet_threshold=cfg.nudenet_threshold) for s in cfg.judge_specs()]
    extractors = {}
    if cfg.fd == "inception":
        from .features import InceptionFeatures

        extractors["inception"] = InceptionFeatures(device)
    from .features import ClipFeatures

    extractors["clip"] = ClipFeatures(cfg.clip_model, cfg.clip_pretrained, device)
    from ..validate import check_against_unet, validate_delta

    # the files themselves (format, finite values, provenance, fingerprint present): before the model loads
    read = {d: validate_delta(d, None, allow_unverified=cfg.allow_unverified) for d in cfg.deltas}
    pipe = load_pipeline(cfg.model, device=device)
    for d, (delta, prov) in read.items():  # against this model: modules, shapes, base fingerprint
        check_against_unet(pipe.unet, delta, prov, d, allow_unverified=cfg.allow_unverified)
    for j in judges:
        j.setup(sets, cfg.forget_label)
    rec = recipe_for(pipe.unet.config)
    steps = cfg.steps or rec.generate.get("steps", 25)
    guidance = cfg.guidance_scale if cfg.guidance_scale is not None else rec.generate.get("guidance_scale", 7.5)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    plans = {ps.name: expand(ps, cfg.per_prompt, cfg.seed, guidance, (size, size), cfg.guidance_scale, cfg.resolution)
             for ps in sets}
    variants = variant_names(cfg.deltas)
    references = {}
    if state.is_main_process:
        if cfg.real_images and cfg.fd != "none":
            from .features import reference_stats

            for fname in ([cfg.fd] if cfg.fd == "inception" else []) + ["clip"]:
                if fname == "clip" and cfg.fd != "clip":
                    continue
                references[fname] = reference_stats(cfg.real_images, extractors[fname], files=real_files)
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{state.process_index}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"output folder {out} cannot be written ({e.strerror}): choose another --out") from None
    if state.is_main_process and not cfg.real_images and cfg.fd != "none" and cfg.clip_model == "toy":
        from ..toy import world

        for ps in sets:  # the toy world's own real images, for FD of retained toy classes
            retained = [lb for lb in ps.label_names() if lb != cfg.forget_label]
            if ps.has_labels and retained and set(retained) <= set(world.SHAPE_NAMES):
                for fname, ex in extractors.items():
                    references[(ps.name, fname)] = _toy_reference(retained, ex, out / "cache")
    base_fp = fingerprint(pipe.unet, select_targets(pipe.unet, rec.include, rec.exclude))
    others_id = frozen_parts_id(pipe)  # the base fingerprint covers the UNet's targets; these draw the pixels too
    work = out / ".work"
    generated = 0
    t_gen = time.time()
    # the base parameters themselves (a LoRA adapter wraps modules but keeps these objects), with their exact values
    base_params = [(p, p.detach().clone()) for p in pipe.unet.parameters()]
    for vname, dpath in variants:
        adapter = load_delta(pipe, dpath, strength=cfg.strength, allow_unverified=cfg.allow_unverified) if dpath else None
        try:
            for ps in sets:
                items = plans[ps.name]
                key = {"model": pipe.semu_model_id, "base_fingerprint": base_fp, "frozen_parts": others_id, "delta": file_sha(dpath) if dpath else None,
                       "strength": cfg.strength if dpath else None, "steps": steps,
                       "scheduler": type(pipe.scheduler).__name__, "batch_size": cfg.batch_size,
                       "items": hashlib.sha256(json.dumps([(it.prompt, it.seed, it.guidance, it.height, it.width)
                                                           for it in items]).encode()).hexdigest()[:16]}
                cache = ImageCache(out / "images" / vname / ps.name, key, log)
                if state.is_main_process:
                    cache.prepare()
                state.wait_for_everyone()
                generated += _process_shard(pipe, cache, items, ps, judges, extractors, steps, cfg.batch_size, state,
                                            work / vname / ps.name, log, f"{vname}/{ps.name}")
        finally:
            if dpath:
                remove_delta(pipe, dpath, strength=cfg.strength, adapter_name=adapter)
                # subtracting a dense delta leaves float rounding behind (4.6e-7 relative seen), and the next
                # delta's fingerprint check would refuse that base: put the exact base weights back
                with torch.no_grad():
                    for p, v0 in base_params:
                        if not torch.equal(p, v0):
                            p.copy_(v0)
    gen_seconds = time.time() - t_gen
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    from .report import summarize, write_report

    results, generated = summarize(cfg, sets, plans, variants, judges, extractors, references, work, state.num_processes)
    from .report import forget_summary

    report = {
        "summary": {name: forget_summary(res) for name, res in results.items() if forget_summary(res)},
        "results": results,
        "protocol": {"model": pipe.semu_model_id, "base_fingerprint": base_fp,
                     "deltas": {v: {"path": str(d), "sha256_16": file_sha(d)} for v, d in variants if d},
                     "prompt_sets": {ps.name: {"file": str(ps.path), "format": ps.format, "filters": ps.filters,
                                               "rows": len(ps.rows), "prompts": ps.prompts[:2000]} for ps in sets},
                     "per_prompt": cfg.per_prompt, "seed": cfg.seed,
                     "seeds": "image k of prompt row i uses the row's seed + k, or 1000*i + seed + k",
                     "steps": steps, "guidance_scale": guidance,
                     "guidance": "per-row CSV guidance unless --guidance-scale is given, else the recipe default",
                     "size": "per-row CSV size unless --resolution is given, else the model default",
                     "default_size": size, "resolution": cfg.resolution,
                     "scheduler": type(pipe.scheduler).__name__, "batch_size": cfg.batch_size,
                     "forget_label": cfg.forget_label, "judges": [j.describe() for j in judges],
                     "judge": judges[0].name if judges else None, "clip_model": extractors["clip"].name,
                     "fd_features": cfg.fd, "real_images": ({"folder": str(cfg.real_images), "files": len(real_files),
                                                             "hash": next(iter(references.values()))["hash"] if references else None}
                                                            if cfg.real_images else None),
                     "nudenet_threshold": cfg.nudenet_threshold, "strength": cfg.strength, "versions": _versions()},
        "timing": {"seconds": time.time() - t_start, "generate_seconds": gen_seconds, "images_generated": generated,
                   "images_total": n_total, "device": device, "processes": state.num_processes},
    }
    write_report(report, sets, plans, variants, cfg, out)
    shutil.rmtree(work, ignore_errors=True)
    return report


def _process_shard(pipe, cache: ImageCache, items: list[Item], ps: PromptSet, judges, extractors, steps: int,
                   batch_size: int, state, work: Path, log, desc: str) -> int:
    """Generate (or read from the cache) this process's batches, judge them and take their features, one batch in
    memory at a time; write the per-image records to this process's shard file. Returns images generated."""
    from tqdm.auto import tqdm

    bl = batches(items, batch_size)
    mine = list(range(state.process_index, len(bl), state.num_processes))
    idx: list[int] = []
    recs: dict[str, list] = {j.name: [] for j in judges}
    feats: dict[str, list] = {k: [] for k in extractors}
    clip_scores: list[float] = []
    generated = 0
    for b in tqdm(mine, desc=desc, disable=not mine or not _progress(), dynamic_ncols=True):
        batch = bl[b]
        ims = cache.load(batch)
        if ims is None:
            ims = generate_batch(pipe, batch, steps)
            cache.save(batch, ims)
            generated += len(batch)
        idx += [it.index for it in batch]
        for j in judges:
            recs[j.name] += j.judge(ims, batch, ps)
        for k, ex in extractors.items():
            f = ex.features(ims)
            feats[k].append(f.astype(np.float64))
            if k == "clip":
                clip_scores += ex.clip_scores(f, [it.prompt for it in batch]).astype(float).tolist()
        del ims
    work.mkdir(parents=True, exist_ok=True)
    r = state.process_index
    atomic.write_json(work / f"rank{r}.json", {"index": idx, "records": recs, "clip_score": clip_scores,
                                               "generated": generated}, indent=None)
    np.savez(work / f"rank{r}.npz", **{k: (np.concatenate(v) if v else np.zeros((0, 1))) for k, v in feats.items()})
    return generated


def _progress() -> bool:
    return os.environ.get("SEMU_EVAL_PROGRESS", "1") != "0"


def _versions() -> dict:
    import importlib.metadata as md

    v = {}
    for p in ("torch", "diffusers", "transformers", "open_clip_torch", "accelerate", "peft", "nudenet", "onnxruntime",
              "torchmetrics", "torch-fidelity", "semu-diffusion"):
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = None
    return v
