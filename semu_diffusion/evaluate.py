"""semu-eval: paired batch generation (base and each delta share seeds), CLIP zero-shot classification,
FD (CLIP or Inception features) against real images, CLIP score, and a report (JSON, HTML, PNG)."""
from __future__ import annotations

import argparse
import csv
import hashlib
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .concepts import PROMPTS_DIR


@dataclass
class PromptSet:
    name: str
    prompts: list[str]
    labels: list[str | None]
    seeds: list[int | None]

    @property
    def has_labels(self) -> bool:
        return all(lbl for lbl in self.labels)


def load_prompt_set(spec: str, prompts_dir: Path = PROMPTS_DIR) -> PromptSet:
    """A prompt set by name (prompts/<name>.csv|.txt) or path. See prompts/README.md for the format."""
    p = Path(spec)
    if not p.exists():
        cands = [prompts_dir / f"{spec}.csv", prompts_dir / f"{spec}.txt"]
        p = next((c for c in cands if c.exists()), None)
        if p is None:
            known = sorted({x.stem for x in prompts_dir.glob("*.csv")} | {x.stem for x in prompts_dir.glob("*.txt")})
            raise FileNotFoundError(f"unknown prompt set {spec!r}: pass a file path or one of {', '.join(known)}")
    prompts, labels, seeds = [], [], []
    if p.suffix == ".csv":
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "prompt" not in rows[0]:
            raise ValueError(f"{p}: a CSV prompt set needs a 'prompt' column header")
        for r in rows:
            if (r.get("prompt") or "").strip():
                prompts.append(r["prompt"].strip())
                labels.append((r.get("label") or "").strip() or None)
                seeds.append(int(r["seed"]) if (r.get("seed") or "").strip() else None)
    else:
        for ln in p.read_text().splitlines():
            if ln.strip() and not ln.lstrip().startswith("#"):
                prompts.append(ln.strip())
                labels.append(None)
                seeds.append(None)
    if not prompts:
        raise ValueError(f"prompt set {p} holds no prompts")
    return PromptSet(name=p.stem, prompts=prompts, labels=labels, seeds=seeds)


def expand(ps: PromptSet, per_prompt: int, seed: int = 0) -> tuple[list[str], list[int], list[str | None], list[int]]:
    """-> prompts, seeds, labels, prompt-row index, one entry per image."""
    P, S, L, R = [], [], [], []
    for i, (pr, lb, sd) in enumerate(zip(ps.prompts, ps.labels, ps.seeds)):
        base = sd if sd is not None else 1000 * i + seed
        for k in range(per_prompt):
            P.append(pr)
            S.append(base + k)
            L.append(lb)
            R.append(i)
    return P, S, L, R


@dataclass
class EvalConfig:
    model: str = "toy"
    deltas: list[str] = field(default_factory=list)
    prompt_sets: list[str] = field(default_factory=lambda: ["toy_classes"])
    per_prompt: int = 20
    out: str = "eval-out"
    forget_label: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    batch_size: int = 64
    fd: str = "clip"  # clip | inception | none
    clip_model: str = "toy"  # "toy" or an open_clip model name
    clip_pretrained: str | None = None
    strength: float = 1.0
    device: str | None = None

    def __post_init__(self):
        if self.per_prompt < 1:
            raise ValueError("--per-prompt must be >= 1")
        if self.fd not in ("clip", "inception", "none"):
            raise ValueError("--fd must be clip, inception or none")
        if not self.prompt_sets:
            raise ValueError("give at least one --prompts set")


def _sha(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _load_judge(cfg: EvalConfig, device: str):
    """(model, tokenizer, preprocess(images01)) of the CLIP judge."""
    if cfg.clip_model == "toy":
        from .toy import load_toyclip
        from .toy.train import clip_preprocess

        m, tok = load_toyclip(device=device)
        return m, tok, clip_preprocess
    try:
        import open_clip
    except ImportError as e:
        raise ImportError("the CLIP judge needs open_clip: pip install open_clip_torch") from e
    try:
        m, _, pre = open_clip.create_model_and_transforms(cfg.clip_model, pretrained=cfg.clip_pretrained, device=device)
    except Exception as e:
        raise RuntimeError(f"could not load open_clip {cfg.clip_model}/{cfg.clip_pretrained} offline "
                           f"({type(e).__name__}): put its weights in the local cache or use --clip-model toy") from None
    mean = torch.tensor(pre.transforms[-1].mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.transforms[-1].std).view(1, 3, 1, 1)
    size = m.visual.image_size if isinstance(m.visual.image_size, int) else m.visual.image_size[0]

    def preprocess(x01):
        x01 = torch.nn.functional.interpolate(x01, size=size, mode="bicubic", antialias=True, align_corners=False)
        return (x01.clamp(0, 1) - mean.to(x01.device)) / std.to(x01.device)

    return m.eval(), open_clip.get_tokenizer(cfg.clip_model), preprocess


def _classifier(cfg, judge, label_names: list[str], device):
    from .metrics import ClipZeroShotClassifier, toy_shape_classifier

    model, tok, pre = judge
    if cfg.clip_model == "toy":
        from .toy import world

        if set(label_names) <= set(world.SHAPE_NAMES):
            return toy_shape_classifier(model, tok, device)
        if set(label_names) <= set(world.COLOR_NAMES):
            from .metrics import toy_color_classifier

            return toy_color_classifier(model, tok, device)
    prompts = [[f"a photo of a {c}", f"an image of a {c}", f"a picture of a {c}"] for c in label_names]
    return ClipZeroShotClassifier(model, tok, label_names, prompts, pre, device)


def _cache_images(pipe, variant_dir: Path, key: dict, prompts, seeds, steps, guidance, batch_size, state, desc):
    """Generate the images not yet on disk (this process's shard) and return all of them (uint8)."""
    from PIL import Image

    from .generation import generate

    variant_dir.mkdir(parents=True, exist_ok=True)
    kf = variant_dir / "key.json"
    if state.is_main_process:
        if kf.exists() and json.loads(kf.read_text()) != key:
            for f in variant_dir.glob("*.png"):
                f.unlink()
        kf.write_text(json.dumps(key, indent=1))
    state.wait_for_everyone()
    names = [variant_dir / f"{i:05d}_{s}.png" for i, s in enumerate(seeds)]
    todo = [i for i, n in enumerate(names) if not n.exists() and i % state.num_processes == state.process_index]
    if todo:
        imgs = generate(pipe, [prompts[i] for i in todo], [seeds[i] for i in todo], steps=steps, guidance_scale=guidance,
                        batch_size=batch_size, desc=desc)
        for i, im in zip(todo, imgs):
            tmp = names[i].with_suffix(".tmp.png")
            Image.fromarray(im).save(tmp)
            os.replace(tmp, names[i])
    state.wait_for_everyone()
    return np.stack([np.asarray(Image.open(n).convert("RGB")) for n in names]), len(todo)


def _toy_reference(labels: list[str], n_per: int, cache: Path, judge, device) -> tuple[np.ndarray, np.ndarray]:
    """FD-CLIP statistics of real toy images of the given shape labels (random colours), cached as .npz."""
    from .metrics import feature_stats
    from .toy.train import to_tensor

    key = hashlib.sha256(json.dumps([sorted(labels), n_per]).encode()).hexdigest()[:12]
    f = cache / f"ref-toy-{key}.npz"
    if f.exists():
        d = np.load(f)
        return d["mu"], d["sigma"]
    feats = _clip_features(judge, to_tensor(_toy_real_images(labels, n_per)), device)
    mu, sigma = feature_stats(feats)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, mu=mu, sigma=sigma)
    return mu, sigma


@torch.no_grad()
def _clip_features(judge, images01: torch.Tensor, device) -> torch.Tensor:
    model, _, pre = judge
    out = []
    for i in range(0, len(images01), 256):
        out.append(model.encode_image(pre(images01[i : i + 256].to(device))).float().cpu())
    return torch.cat(out)


def run_eval(cfg: EvalConfig, log=print) -> dict:
    from accelerate import PartialState

    from .delta import load_delta, read_delta, remove_delta, validate_delta
    from .loading import load_pipeline
    from .metrics import ClipScore, frechet_distance, feature_stats
    from .recipes import recipe_for
    from .toy.train import to_tensor

    t_start = time.time()
    state = PartialState()
    device = cfg.device or (str(state.device) if state.device.type == "cuda" else "cpu")
    sets = [load_prompt_set(s) for s in cfg.prompt_sets]
    out = Path(cfg.out)
    pipe = load_pipeline(cfg.model, device=device)
    for d in cfg.deltas:  # validate every delta before generating anything
        delta, prov = read_delta(d)
        validate_delta(pipe.unet, delta, prov, d)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"output folder {out} cannot be written ({e.strerror}): choose another --out") from None
    rec = recipe_for(pipe.unet.config)
    steps = cfg.steps or rec.generate.get("steps", 25)
    guidance = cfg.guidance_scale or rec.generate.get("guidance_scale", 7.5)
    judge = _load_judge(cfg, device)
    variants = [("base", None)] + [(Path(d).stem, d) for d in cfg.deltas]
    from .delta import fingerprint
    from .recipes import select_targets

    base_fp = fingerprint(pipe.unet, select_targets(pipe.unet, rec.include, rec.exclude))
    images: dict[tuple[str, str], np.ndarray] = {}
    generated = 0
    t_gen = time.time()
    for vname, dpath in variants:
        if dpath:
            adapter = load_delta(pipe, dpath, strength=cfg.strength)
        try:
            for ps in sets:
                P, S, L, R = expand(ps, cfg.per_prompt, cfg.seed)
                key = {"model": pipe.semu_model_id, "base_fingerprint": base_fp, "delta": _sha(dpath) if dpath else None,
                       "strength": cfg.strength if dpath else None, "steps": steps, "guidance": guidance,
                       "scheduler": type(pipe.scheduler).__name__, "prompts": hashlib.sha256("\n".join(P).encode()).hexdigest()[:16]}
                ims, n = _cache_images(pipe, out / "images" / vname / ps.name, key, P, S, steps, guidance, cfg.batch_size,
                                       state, desc=f"{vname}/{ps.name}")
                images[(vname, ps.name)] = ims
                generated += n
        finally:
            if dpath:
                remove_delta(pipe, dpath, strength=cfg.strength, adapter_name=adapter)
    gen_seconds = time.time() - t_gen
    if not state.is_main_process:
        return {}

    results: dict = {}
    for ps in sets:
        P, S, L, R = expand(ps, cfg.per_prompt, cfg.seed)
        label_names = sorted({lb for lb in L if lb}, key=lambda x: ps.labels.index(x)) if ps.has_labels else []
        clf = _classifier(cfg, judge, _label_space(cfg, label_names), device) if label_names else None
        ref = None
        retained = [lb for lb in label_names if lb != cfg.forget_label]
        if cfg.fd == "clip" and cfg.clip_model == "toy" and retained:
            from .toy import world

            if set(retained) <= set(world.SHAPE_NAMES):
                ref = _toy_reference(retained, 200, out / "cache", judge, device)
        for vname, _ in variants:
            ims = images[(vname, ps.name)]
            x = to_tensor(ims)
            r: dict = {"n_images": len(ims)}
            if clf is not None:
                pred = clf.classify(x).labels.numpy()
                names = np.array(clf.class_names)[pred]
                lab = np.array(L)
                r["per_label_accuracy"] = {lb: float((names[lab == lb] == lb).mean()) for lb in label_names}
                r["accuracy"] = float((names == lab).mean())
                if cfg.forget_label:
                    r["detection_rate"] = float((names == cfg.forget_label).mean())
                    fl = lab == cfg.forget_label
                    if fl.any():
                        r["UA"] = float(1 - (names[fl] == cfg.forget_label).mean())
                    if (~fl).any():
                        r["RA"] = float((names[~fl] == lab[~fl]).mean())
            keep = np.array([lb != cfg.forget_label for lb in L]) if cfg.forget_label else np.ones(len(L), bool)
            if keep.sum() >= 2:
                cs = ClipScore(judge[0], judge[1], judge[2], device)
                cs.update(x[torch.from_numpy(keep)], [p for p, k in zip(P, keep) if k])
                r["clip_score_retained"] = cs.compute()
                if ref is not None:
                    f = _clip_features(judge, x[torch.from_numpy(keep)], device)
                    r["fd_clip_retained_vs_real"] = frechet_distance(*ref, *feature_stats(f))
                if cfg.fd == "inception":
                    from .toy import world

                    if not (retained and set(retained) <= set(world.SHAPE_NAMES)):
                        raise RuntimeError("--fd inception has real reference images only for the toy world's classes")
                    r["fid_inception"] = _inception_fd(ims[keep], _toy_real_images(retained, 200), device)
            results.setdefault(ps.name, {})[vname] = r
        if "base" in results.get(ps.name, {}) and ref is not None:
            fb = _clip_features(judge, to_tensor(images[("base", ps.name)])[torch.from_numpy(np.array([lb != cfg.forget_label for lb in L]))], device)
            for vname, _ in variants[1:]:
                fv = _clip_features(judge, to_tensor(images[(vname, ps.name)])[torch.from_numpy(np.array([lb != cfg.forget_label for lb in L]))], device)
                results[ps.name][vname]["fd_clip_retained_vs_base"] = frechet_distance(*feature_stats(fb), *feature_stats(fv))
    report = {
        "results": results,
        "protocol": {"model": pipe.semu_model_id, "base_fingerprint": base_fp,
                     "deltas": {Path(d).stem: {"path": str(d), "sha256_16": _sha(d)} for d in cfg.deltas},
                     "prompt_sets": {ps.name: ps.prompts for ps in sets}, "per_prompt": cfg.per_prompt, "seed": cfg.seed,
                     "seeds": "image k of prompt row i uses seed 1000*i + seed + k (or the CSV seed + k)",
                     "steps": steps, "guidance_scale": guidance, "scheduler": type(pipe.scheduler).__name__,
                     "forget_label": cfg.forget_label, "judge": cfg.clip_model, "fd_features": cfg.fd,
                     "strength": cfg.strength, "versions": _versions()},
        "timing": {"seconds": time.time() - t_start, "generate_seconds": gen_seconds, "images_generated": generated,
                   "device": device, "processes": state.num_processes},
    }
    _write_json(out / "report.json", report)
    _plot(results, sets, cfg, out / "detection.png")
    _html(report, sets, variants, cfg, out / "report.html")
    return report


def _label_space(cfg, label_names):
    if cfg.clip_model == "toy":
        from .toy import world

        if set(label_names) <= set(world.SHAPE_NAMES):
            return list(world.SHAPE_NAMES)
    return label_names


def _inception_fd(ims: np.ndarray, real: np.ndarray, device: str) -> float:
    """Standard FID: Inception pool features of uint8 images, generated vs real."""
    from .metrics import feature_stats, frechet_distance
    from .metrics.frechet import inception_features

    return frechet_distance(*feature_stats(inception_features(real, device)), *feature_stats(inception_features(ims, device)))


def _toy_real_images(labels: list[str], n_per: int) -> np.ndarray:
    from .toy import world

    rng = np.random.default_rng(12345)
    return np.stack([world.render(world.SHAPE_NAMES.index(lb), int(rng.integers(len(world.COLOR_NAMES))), rng)
                     for lb in sorted(labels) for _ in range(n_per)])


def _versions() -> dict:
    import importlib.metadata as md

    v = {}
    for p in ("torch", "diffusers", "transformers", "open_clip_torch", "accelerate", "peft", "semu-diffusion"):
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = None
    return v


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def _plot(results, sets, cfg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labeled = [ps for ps in sets if ps.has_labels and "per_label_accuracy" in next(iter(results[ps.name].values()))]
    if not labeled:
        return
    fig, axes = plt.subplots(len(labeled), 1, figsize=(10, 3.2 * len(labeled)), squeeze=False)
    for ax, ps in zip(axes[:, 0], labeled):
        res = results[ps.name]
        labels = list(next(iter(res.values()))["per_label_accuracy"])
        w = 0.8 / len(res)
        for j, (v, r) in enumerate(res.items()):
            ax.bar(np.arange(len(labels)) + j * w, [r["per_label_accuracy"][lb] for lb in labels], w, label=v)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - w / 2, labels, rotation=30)
        ax.set_ylim(0, 1)
        erased = f" (erased: {cfg.forget_label})" if cfg.forget_label else ""
        ax.set_title(f"{ps.name}: detection rate per class = share of its images classified as it{erased}")
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _html(report, sets, variants, cfg, path: Path, n_show: int = 8) -> None:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>semu-eval report</title><style>",
             "body{font-family:sans-serif;margin:20px} table{border-collapse:collapse;margin:8px 0}",
             "td,th{border:1px solid #ccc;padding:4px 6px;font-size:13px} img{width:64px;height:64px;image-rendering:pixelated;margin:1px}",
             "</style></head><body><h1>semu-eval report</h1>",
             f"<p>model <b>{esc(str(report['protocol']['model']))}</b>, steps {report['protocol']['steps']}, guidance "
             f"{report['protocol']['guidance_scale']}, {report['protocol']['per_prompt']} images per prompt, forget label "
             f"<b>{esc(str(cfg.forget_label))}</b>. Full numbers: <a href='report.json'>report.json</a>.</p>"]
    if (path.parent / "detection.png").exists():
        parts.append("<img src='detection.png' style='width:auto;height:auto;image-rendering:auto'>")
    for ps in sets:
        res = report["results"][ps.name]
        parts.append(f"<h2>{esc(ps.name)}</h2><table><tr><th>variant</th>")
        cols = [k for k in next(iter(res.values())) if not isinstance(next(iter(res.values()))[k], dict)]
        parts += [f"<th>{esc(c)}</th>" for c in cols] + ["</tr>"]
        for v, r in res.items():
            parts.append(f"<tr><td>{esc(v)}</td>" + "".join(
                f"<td>{r[c]:.3f}</td>" if isinstance(r.get(c), float) else f"<td>{r.get(c, '')}</td>" for c in cols) + "</tr>")
        parts.append("</table><table><tr><th>prompt</th>" + "".join(f"<th>{esc(v)}</th>" for v, _ in variants) + "</tr>")
        P, S, L, R = expand(ps, cfg.per_prompt, cfg.seed)
        for i, prompt in enumerate(ps.prompts):
            idx = [j for j, r in enumerate(R) if r == i][:n_show]
            parts.append(f"<tr><td>{esc(prompt)}</td>")
            for v, _ in variants:
                parts.append("<td>" + "".join(f"<img src='images/{esc(v)}/{esc(ps.name)}/{j:05d}_{S[j]}.png'>" for j in idx) + "</td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    from .cli import _fail, _known_errors, _quiet_libraries

    p = argparse.ArgumentParser(prog="semu-eval", description="Generate images for prompt sets with the base model and "
                                "each delta (paired seeds) and measure erasure: CLIP zero-shot detection, FD, CLIP score.")
    p.add_argument("--model", default="toy")
    p.add_argument("--delta", action="append", default=[], help="delta file (repeatable)")
    p.add_argument("--prompts", action="append", default=None, help="prompt set name in prompts/ or a file (repeatable)")
    p.add_argument("--per-prompt", type=int, default=20)
    p.add_argument("--out", default="eval-out")
    p.add_argument("--forget-label", default=None, help="the erased class: prints UA and RA")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--fd", choices=["clip", "inception", "none"], default="clip")
    p.add_argument("--clip-model", default="toy", help="'toy' or an open_clip model name")
    p.add_argument("--clip-pretrained", default=None, help="open_clip pretrained tag (must be in the local cache)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    _quiet_libraries()
    try:
        cfg = EvalConfig(model=a.model, deltas=a.delta, prompt_sets=a.prompts or ["toy_classes"], per_prompt=a.per_prompt,
                         out=a.out, forget_label=a.forget_label, steps=a.steps, guidance_scale=a.guidance_scale, seed=a.seed,
                         batch_size=a.batch_size, fd=a.fd, clip_model=a.clip_model, clip_pretrained=a.clip_pretrained,
                         strength=a.strength, device=a.device)
        rep = run_eval(cfg)
    except (*_known_errors(), RuntimeError, ImportError) as e:
        _fail(p.prog, str(e).splitlines()[0] if str(e) else type(e).__name__)
    if not rep:
        return
    for sname, res in rep["results"].items():
        print(f"[{sname}]")
        for v, r in res.items():
            bits = [f"{k}={r[k]:.3f}" for k in ("detection_rate", "accuracy", "UA", "RA", "fd_clip_retained_vs_real",
                                                 "fd_clip_retained_vs_base", "clip_score_retained") if k in r]
            print(f"  {v:>16}: " + "  ".join(bits))
    print(f"report: {Path(cfg.out) / 'report.html'}  ({rep['timing']['seconds']:.1f} s, "
          f"{rep['timing']['images_generated']} images generated)")
    if a.json:
        print(json.dumps({"results": rep["results"], "timing": rep["timing"]}, default=float))
