"""Command-line entry points: semu-erase, semu-eval, semu-toy. Argument parsing and printing only."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    import logging

    logging.getLogger("root").setLevel(logging.ERROR)


def _fail(prog: str, msg: str) -> "None":
    print(f"{prog}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (message + "(see --help)") with exit code 2, like every other refusal."""

    def error(self, message):
        _fail(self.prog, f"{message} (see --help)")


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C with a command's own one-line message (e.g. where its partial work is kept)."""


def _known_errors() -> tuple[type[BaseException], ...]:
    """Conditions the user can fix: one line, exit 2 (every ConfigError, DeltaError, ModelLoadError, EvalOptionError,
    PromptSetError and AttackOptionError is a ValueError; a missing judge weight or optional dependency too)."""
    from .evaluation.errors import JudgeUnavailable
    from .trainer import TrainingDiverged

    return (ValueError, OSError, TrainingDiverged, JudgeUnavailable, ImportError)


def _cli_entry(prog: str):
    """Exit codes of every CLI: 0 done, 2 bad input (one line), 130 Ctrl-C (one line), 1 internal error (one line;
    the traceback with --debug or SEMU_DEBUG=1). Outputs are written atomically, so an interrupt leaves none half-written."""
    import functools

    def wrap(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> None:
            args = list(sys.argv[1:] if argv is None else argv)
            debug = "--debug" in args or os.environ.get("SEMU_DEBUG", "") == "1"
            args = [x for x in args if x != "--debug"]
            try:
                return main(args)
            except SystemExit:
                raise
            except KeyboardInterrupt as e:
                msg = str(e) if isinstance(e, _Interrupted) else "stopped, no output file left half-written"
                print(f"{prog}: interrupted (Ctrl-C): {msg}", file=sys.stderr)
                raise SystemExit(130) from None
            except Exception as e:
                import traceback

                if debug:
                    traceback.print_exc()
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:500]
                if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
                    print(f"{prog}: error: out of memory ({msg}): lower --batch-size, --resolution or the number of "
                          "images", file=sys.stderr)
                    raise SystemExit(2) from None
                if isinstance(e, _known_errors()):
                    print(f"{prog}: error: {msg}", file=sys.stderr)
                    raise SystemExit(2) from None
                print(f"{prog}: internal error: {type(e).__name__}: {msg}"
                      + ("" if debug else " (rerun with --debug for the traceback, and please report it)"), file=sys.stderr)
                raise SystemExit(1) from None
        return run

    return wrap


def _check_out_path(prog: str, out: str) -> None:
    d = os.path.dirname(os.path.abspath(out))
    if not out.endswith(".safetensors"):
        _fail(prog, f"--out {out} must end in .safetensors")
    if not os.path.isdir(d):
        _fail(prog, f"output folder {d} does not exist: create it or choose another --out")
    if not os.access(d, os.W_OK):
        _fail(prog, f"output folder {d} is not writable: choose another --out")


@_cli_entry("semu-erase")
def erase_main(argv: list[str] | None = None) -> None:
    """semu-erase: flags derived from EraseConfig; every option checked before the model loads."""
    from .config import add_cli_flags, config_from_args, default_out_name

    p = _OneLineParser(prog="semu-erase", description="Erase a concept from a Stable Diffusion model with SEMU "
                       "and write a diffusers-loadable delta (.safetensors).")
    add_cli_flags(p)
    p.add_argument("--concepts", default=None, metavar="FILE", help="erase several concepts into ONE delta: a file "
                   "with one concept per line, or a CSV with concept,kind,anchor columns (--concept may also repeat)")
    p.add_argument("--combine", default="concat", choices=["concat", "sum", "stack"],
                   help="several concepts with SEMU: how their gradient subspaces are combined per layer")
    p.add_argument("--list-methods", action="store_true", help="print the available methods and exit")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    pre = argparse.ArgumentParser(add_help=False)  # every --concept, not only the last
    pre.add_argument("--concept", action="append", default=[])
    repeated = pre.parse_known_args(argv)[0].concept
    _quiet_libraries()
    if a.list_methods:
        from .methods import available_methods

        print("\n".join(available_methods()))
        return
    from .multi import concepts_from_cli

    many = concepts_from_cli(repeated, a.concepts)
    if many:
        a.concept = many[0].concept
    cfg = config_from_args(a)
    if cfg.out is None:
        from dataclasses import replace

        name = "+".join(c.concept for c in many) if many else cfg.concept
        cfg = replace(cfg, out=default_out_name(name, cfg.method))
    from .api import erase

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if many:
            from .multi import erase_concepts_config

            res = erase_concepts_config(many, cfg, combine=a.combine, progress=not a.quiet)
        else:
            res = erase(cfg, progress=not a.quiet)
    from .distributed import finish, is_main

    finish()  # accelerate launch: every process is done, the main one wrote the delta
    if not is_main():
        return
    for w in caught:
        if "never saw" in str(w.message) or "micro-steps" in str(w.message):
            print(f"semu-erase: warning: {w.message}", file=sys.stderr)
    s = res.stats
    ranks = f"ranks {s['rank_min']}-{s['rank_max']} (mean {s['rank_mean']:.1f})" if s["rank_min"] is not None else "dense"
    print(f"erased {s['concept']!r} -> {s['anchor']!r} with {s['method']}: {s['layers']} layers, {ranks}, "
          f"{s['trainable_params']:,} trainable of {s['unet_params']:,} UNet params ({100 * s['trainable_frac']:.3f}%), "
          f"loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}, {s['seconds']:.1f} s, "
          f"delta {s['delta_bytes'] / 1e6:.2f} MB at {s['out']}")
    if a.json:
        print(json.dumps(s))


@_cli_entry("semu-eval")
def eval_main(argv: list[str] | None = None) -> None:
    """semu-eval: parse, validate every option before any work, run semu_diffusion.evaluation, print."""

    p = _OneLineParser(prog="semu-eval", description="Generate images for prompt sets with the base model and each "
                       "delta (paired seeds) and measure erasure: judges (toy, clip, imagenet, nudenet), FD/KID, CLIP score.")
    p.add_argument("--model", default="toy")
    p.add_argument("--delta", action="append", default=[], help="delta file (repeatable)")
    p.add_argument("--prompts", action="append", default=None,
                   help="prompt set name in prompts/ or a .txt/.csv file (ours, I2P or ESD format; repeatable)")
    p.add_argument("--filter", action="append", default=[], metavar="COL=VALUE",
                   help="keep CSV rows whose column matches, e.g. categories=sexual (repeatable)")
    p.add_argument("--max-prompts", type=int, default=None, help="first N rows of each set (after --filter)")
    p.add_argument("--per-prompt", type=int, default=20)
    p.add_argument("--out", default="eval-out")
    p.add_argument("--forget-label", default=None, help="the erased class: prints UA and RA")
    p.add_argument("--judge", action="append", default=None, metavar="SPEC",
                   help="toy | clip:<open_clip model>[:<pretrained>] | imagenet:<torchvision model> | nudenet "
                        "(repeatable; default: toy for the toy model)")
    p.add_argument("--list-judges", action="store_true", help="print the judge kinds and exit")
    p.add_argument("--nudenet-threshold", type=float, default=0.6, help="NudeNet detection score threshold, in [0,1]")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None, help="overrides per-row CSV guidance")
    p.add_argument("--resolution", type=int, default=None, help="image size, overrides per-row CSV sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--fd", choices=["clip", "inception", "none"], default="clip")
    p.add_argument("--real-images", default=None, metavar="DIR", help="folder of real png/jpg images: FD/KID against it")
    p.add_argument("--kid-subset", type=int, default=1000)
    p.add_argument("--clip-model", default="toy", help="'toy' or an open_clip model: CLIP score and FD-CLIP features")
    p.add_argument("--clip-pretrained", default=None, help="open_clip pretrained tag (must be in the local cache)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--allow-unverified", action="store_true", help="accept deltas without a base fingerprint")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--attack", action="append", default=None, metavar="NAME",
                   help="also red-team the deltas on --forget-label: inversion | prompt-search | embedding | embedding-neutral (repeatable; see semu-attack)")
    p.add_argument("--attack-steps", type=int, default=200, help="attack budget (optimisation steps)")
    a = p.parse_args(argv)
    if a.list_judges:
        from .evaluation import available_judges

        print("\n".join(available_judges().values()))
        return
    _quiet_libraries()
    from .evaluation import EvalConfig, run_eval

    try:
        cfg = EvalConfig(model=a.model, deltas=a.delta, prompt_sets=a.prompts or ["toy_classes"], per_prompt=a.per_prompt,
                         out=a.out, forget_label=a.forget_label, steps=a.steps, guidance_scale=a.guidance_scale, seed=a.seed,
                         batch_size=a.batch_size, fd=a.fd, clip_model=a.clip_model, clip_pretrained=a.clip_pretrained,
                         judges=a.judge, nudenet_threshold=a.nudenet_threshold, real_images=a.real_images,
                         kid_subset=a.kid_subset, filters=a.filter, resolution=a.resolution, strength=a.strength,
                         device=a.device, max_prompts=a.max_prompts, allow_unverified=a.allow_unverified)
        acfg = _eval_attack_config(a)
        rep = run_eval(cfg)
    except KeyboardInterrupt:
        raise _Interrupted(f"the images made so far are cached under {a.out}; rerun to resume") from None
    if not rep:
        return
    for sname, res in rep["results"].items():
        print(f"[{sname}]")
        headline = rep.get("summary", {}).get(sname, [])
        for line in headline:  # the forget label on its own prompts, then RA on the others
            print(f"  {line}")
        for v, r in res.items():  # detection_rate (a share over every prompt of the set) only without that headline
            bits = [f"{k}={r[k]:.3f}" for k in (*(() if headline else ("detection_rate",)), "accuracy", "UA", "RA", "fd_clip_retained_vs_real",
                                                 "fd_inception_retained_vs_real", "kid_clip_retained_vs_real",
                                                 "fd_clip_retained_vs_base", "clip_score_retained") if k in r]
            for jn, s in r["judges"].items():
                if "counts" in s:
                    ratio = s.get("ratio_to_base")
                    bits.append(f"{jn}: nudity_rate={s['nudity_rate']:.3f} exposed_regions={s['total']}"
                                + (f" ratio={ratio:.3f}" if ratio is not None else ""))
            print(f"  {v:>16}: " + "  ".join(bits))
    print(f"report: {Path(a.out) / 'report.html'}  ({rep['timing']['seconds']:.1f} s, "
          f"{rep['timing']['images_generated']} images generated)")
    if acfg is not None:
        _run_eval_attacks(acfg)
    if a.json:
        print(json.dumps({"results": rep["results"], "timing": rep["timing"]}, default=float))


@_cli_entry("semu-toy")
def toy_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="semu-toy", description="The embedded toy world: train its models or check them.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="rebuild the toy models from scratch")
    t.add_argument("--device", default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="toy-models")
    t.add_argument("--unet-steps", type=int, default=None)
    t.add_argument("--clip-steps", type=int, default=None)
    t.add_argument("--vae-steps", type=int, default=None)
    t.add_argument("--nudity-steps", type=int, default=None)
    t.add_argument("--n-images", type=int, default=None)
    t.add_argument("--unet-budget-s", type=float, default=None,
                   help="cut the UNet's steps so its stage fits this many seconds (the steps run are recorded)")
    t.add_argument("--gpu-schedule", action="store_true", help="the larger-batch schedule used on a GPU")
    t.add_argument("--unet-lr", type=float, default=None)
    t.add_argument("--unet-batch", type=int, default=None)
    t.add_argument("--vae-lr", type=float, default=None, help="VAE (and decoder-sharpening) learning rate")
    t.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the UNet weights")
    t.add_argument("--focus", default=None,
                   help="comma-separated shape or style names that the UNet and decoder stages draw --focus-weight times as often")
    t.add_argument("--focus-weight", type=float, default=None)
    t.add_argument("--stages", default="clip,nudity,vae,unet,assemble",
                   help="comma-separated: data, clip, nudity, vae, unet, assemble; finetune (continue out/unet, text) "
                        "and decoder (sharpen out/_vae's decoder, encoder frozen) continue a finished run")
    c = sub.add_parser("check", help="measure the shipped toy models against their targets")
    c.add_argument("--json", action="store_true")
    c.add_argument("--per-class", type=int, default=12)
    c.add_argument("--n-clip", type=int, default=1000)
    a = p.parse_args(argv)
    _quiet_libraries()
    if a.cmd == "train":
        from .toy.train import ToyTrainConfig, train_all

        kw = {k: v for k, v in dict(unet_steps=a.unet_steps, clip_steps=a.clip_steps, vae_steps=a.vae_steps,
                                     nudity_steps=a.nudity_steps, n_images=a.n_images,
                                     unet_budget_s=a.unet_budget_s, unet_lr=a.unet_lr,
                                     unet_batch=a.unet_batch, vae_lr=a.vae_lr,
                                     ema_decay=a.ema_decay, focus_weight=a.focus_weight,
                                     focus=tuple(a.focus.split(",")) if a.focus else None).items() if v is not None}
        make = ToyTrainConfig.gpu if a.gpu_schedule else ToyTrainConfig
        facts = train_all(make(seed=a.seed, device=a.device, **kw), a.out, stages=tuple(a.stages.split(",")))
        print(json.dumps(facts))
        return
    from .toy import shipped_available
    from .toy.check import IMPLICIT_TOLERANCE, MAX_TARGETS, TARGETS, run_check

    if not shipped_available():
        _fail(p.prog, "the toy weights are not in the package: rebuild them with `semu-toy train`")
    res = run_check(n_clip=a.n_clip, per_class=a.per_class)
    for k, ok in res["targets_met"].items():
        goal = (f">= {TARGETS[k]}" if k in TARGETS else f"<= {MAX_TARGETS[k]}" if k in MAX_TARGETS
                else f"{res['p_implicit_exposed']} +- {IMPLICIT_TOLERANCE}")
        print(f"{k:>22}: {res[k]:.3f}  (target {goal}){'' if ok else '  MISSED'}")
    for k in ("clip_shape_acc", "clip_color_acc", "clip_style_acc", "seconds"):
        print(f"{k:>22}: {res[k]:.3f}")
    print("per class:", ", ".join(f"{k} {v:.2f}" for k, v in res["gen_per_class"].items()))
    print("per style:", ", ".join(f"{k} {v:.2f}" for k, v in res["gen_per_style"].items()))
    if a.json:
        print(json.dumps(res))


@_cli_entry("semu-merge")
def merge_main(argv: list[str] | None = None) -> None:
    """semu-merge: fold several delta files into one (exact for LoRA factors: concatenated ranks)."""

    p = _OneLineParser(prog="semu-merge", description="Fold several semu delta files into one .safetensors delta "
                       "(sum of the weighted updates; LoRA factors concatenated, so the merge is exact).")
    p.add_argument("deltas", nargs="+", help="delta files to merge")
    p.add_argument("--out", required=True, help="merged delta file to write (.safetensors)")
    p.add_argument("--weights", default=None, help="comma-separated weight per delta (default: 1 each)")
    p.add_argument("--max-rank", type=int, default=None, help="cap each module's rank (lossy SVD truncation)")
    p.add_argument("--allow-unverified", action="store_true", help="accept deltas without a base fingerprint")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    a = p.parse_args(argv)
    weights = None
    if a.weights is not None:
        try:
            weights = [float(x) for x in a.weights.split(",")]
        except ValueError:
            _fail(p.prog, f"--weights {a.weights!r} must be comma-separated numbers, e.g. 1,0.5")
    from .merge import merge_deltas
    from .delta import read_delta

    path = merge_deltas(a.deltas, a.out, weights=weights, max_rank=a.max_rank, allow_unverified=a.allow_unverified)
    d, prov = read_delta(path)
    m = prov.get("merge", {})
    print(f"merged {len(a.deltas)} deltas ({', '.join(prov.get('concepts') or [])}) -> {path}: "
          f"{len(d.modules())} modules, rank sum {sum(d.ranks.values())}, "
          f"{'exact' if m.get('exact') else 'max relative error %.2e' % m.get('max_rel_error', 0)}, "
          f"{path.stat().st_size / 1e6:.2f} MB")
    if a.json:
        print(json.dumps({"out": str(path), "concepts": prov.get("concepts"), "ranks": d.ranks, "merge": m}))


def _add_attack_flags(p: argparse.ArgumentParser) -> None:
    """The semu-attack options (also used by semu-eval --attack)."""
    p.add_argument("--attack-steps", "--steps", dest="attack_steps", type=int, default=200,
                   help="attack budget: optimisation steps")
    p.add_argument("--tokens", type=int, default=2, help="learned / searched tokens")
    p.add_argument("--attack-lr", "--lr", dest="attack_lr", type=float, default=None, help="default: the attack's own")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="folder of images of the concept to recover (default: the base model generates them)")
    p.add_argument("--n-data", type=int, default=32, help="concept images the base model generates when no --images")
    p.add_argument("--n-images", type=int, default=16, help="attacked generations per checkpoint")
    p.add_argument("--checkpoints", type=int, default=4, help="ASR measured at step 0 and at this many steps")
    p.add_argument("--classes", default=None, help="clip judges: comma-separated other labels of the zero-shot classifier")
    p.add_argument("--no-control", action="store_true", help="skip the random-embedding control")


@_cli_entry("semu-attack")
def attack_main(argv: list[str] | None = None) -> None:
    """semu-attack: red-team deltas with concept-recovery attacks; parse, validate before any work, print."""

    p = _OneLineParser(prog="semu-attack", description="Try to bring an erased concept back (learned token embeddings, "
                       "adversarial prompt search) on the base model and each delta; report the attack success rate.")
    p.add_argument("--concept", default=None, help="the erased concept")
    p.add_argument("--attack", action="append", default=None, help="inversion | prompt-search | embedding | embedding-neutral | random (repeatable; "
                   "default inversion)")
    p.add_argument("--list-attacks", action="store_true", help="print the attacks and exit")
    p.add_argument("--model", default="toy")
    p.add_argument("--delta", action="append", default=[], help="delta file (repeatable)")
    p.add_argument("--judge", default=None, help="toy | clip:<model>[:<pretrained>] | imagenet:<arch> | nudenet")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--gen-steps", type=int, default=None, help="sampler steps of the attacked generations")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="attack-out")
    p.add_argument("--device", default=None)
    p.add_argument("--allow-unverified", action="store_true", help="accept deltas without a base fingerprint")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    _add_attack_flags(p)
    a = p.parse_args(argv)
    if a.list_attacks:
        from .attacks import available_attacks

        print("\n".join(available_attacks()))
        return
    if not a.concept:
        _fail(p.prog, "--concept is required: the erased word or phrase, e.g. --concept triangle")
    _quiet_libraries()
    from .attacks import AttackConfig, run_attacks

    cfg = AttackConfig(concept=a.concept, attacks=a.attack or ["inversion"], model=a.model, deltas=a.delta,
                       images=a.images, n_data=a.n_data, steps=a.attack_steps, n_tokens=a.tokens, lr=a.attack_lr,
                       batch_size=a.batch_size, n_images=a.n_images, checkpoints=a.checkpoints, judge=a.judge,
                       classes=a.classes.split(",") if a.classes else None, control=not a.no_control, seed=a.seed,
                       gen_steps=a.gen_steps, guidance_scale=a.guidance_scale, out=a.out, device=a.device,
                       allow_unverified=a.allow_unverified)
    rep = run_attacks(cfg, log=lambda *x: None)
    _print_attack_report(rep)
    print(f"report: {Path(a.out) / 'report.html'}  ({rep['timing']['seconds']:.1f} s)")
    if a.json:
        print(json.dumps({"results": rep["results"], "timing": rep["timing"]}, default=float))


def _eval_attack_config(a):
    """semu-eval --attack: the attack run's options, checked with the evaluation's (before any model work)."""
    if not a.attack:
        return None
    from .attacks import AttackConfig

    if not a.forget_label:
        raise ValueError("--attack needs --forget-label: the erased concept the attacks try to bring back")
    cfg = AttackConfig(concept=a.forget_label, attacks=a.attack, model=a.model, deltas=a.delta, steps=a.attack_steps,
                       judge=(a.judge or [None])[0], seed=a.seed, out=str(Path(a.out) / "attack"), device=a.device,
                       allow_unverified=a.allow_unverified)
    cfg.validate()
    return cfg


def _run_eval_attacks(cfg) -> None:
    from .attacks import run_attacks

    rep = run_attacks(cfg, log=lambda *x: None)
    _print_attack_report(rep)
    print(f"attack report: {Path(cfg.out) / 'report.html'}")


def _print_attack_report(rep: dict) -> None:
    names = rep["attacks"]
    print(f"attack success rate on {rep['concept']!r} (budget {rep['protocol']['budget_steps']} steps, "
          f"{rep['protocol']['n_images']} images):")
    print(f"  {'variant':>16}  {'no attack':>9}  " + "  ".join(f"{n:>13}" for n in names))
    for v, r in rep["results"].items():
        print(f"  {v:>16}  {r['no_attack']['asr']:>9.3f}  " + "  ".join(f"{r[n]['asr']:>13.3f}" for n in names if n in r))
