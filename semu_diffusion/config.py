"""``EraseConfig``: the single list of erase options.

Each field carries its type, default and help (``metadata``); the ``semu-erase`` flags, the recipe merge
(:func:`resolve`: explicit value > paper preset > recipe's method section > recipe > default) and the delta's
provenance are derived from it. ``__post_init__`` checks every value (type, range, finiteness, files, output
paths, device and precision) before any model is loaded, raising :class:`ConfigError` (a ``ValueError``) with a
one-line message that names the option and the fix.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_STEPS = 100_000
MAX_FORGET_N = 100_000
MAX_RESOLUTION = 4096
PAPER_PRESETS: dict[str, dict[str, Any]] = {
    # the official SEMU SD scripts: one SVD per conv input channel, r = 0 allowed (layer frozen), no projection,
    # remap target = the current model's prediction for another class (detached), every Linear/Conv2d targeted
    "semu-paper": {"method": "semu", "conv_mode": "per-channel", "r_min": 0, "r_max": None, "project": False,
                   "remap_target": "current", "targets": r".*", "anchor_share": 0.0, "retain_energy": 0.0,
                   "stop_every": 0, "forget_modifiers": "", "forget_bare": False},
    # the official ESD scripts: negative-guidance target only, no retain term (ESD has none), weights and biases
    # trained (method_options are merged key by key: the user's own keys win)
    "esd-x-paper": {"method": "esd-x", "retain_weight": 0.0, "anchor_share": 0.0, "stop_every": 0,
                    "forget_modifiers": "", "forget_bare": False, "method_options": {"train_bias": True}},
    "esd-u-paper": {"method": "esd-u", "retain_weight": 0.0, "anchor_share": 0.0, "stop_every": 0,
                    "forget_modifiers": "", "forget_bare": False, "method_options": {"train_bias": True}},
}


class ConfigError(ValueError):
    """A bad erase option (raised before any model work)."""


def opt(default: Any = None, help: str = "", *, recipe: str | None = None, final: Any = None, choices=None,
        cli: bool = True, flag: str | None = None, lo=None, hi=None) -> Any:
    """A config field: ``recipe`` = "section.key" the value falls back to, ``final`` = the built-in default,
    ``lo``/``hi`` = inclusive bounds (numbers), ``cli`` = exposed as a ``semu-erase`` flag."""
    md = {"help": help, "recipe": recipe, "final": final, "choices": choices, "cli": cli, "flag": flag, "lo": lo, "hi": hi}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=md)
    return field(default=default, metadata=md)


@dataclass
class EraseConfig:
    concept: str = opt(None, 'what to erase, e.g. "triangle", "nudity", "Van Gogh style"')
    model: str = opt("toy", "'toy' (embedded), a local diffusers folder, or a cached hub id")
    method: str | None = opt(None, "unlearning method (see --list-methods; default: the preset's, else semu)")
    preset: str | None = opt(None, "paper-exact mode: " + ", ".join(PAPER_PRESETS) + " (sets the method and its "
                             "paper's choices; explicit options still win)", choices=list(PAPER_PRESETS))
    recipe: str | None = opt(None, "recipe name in pipelines/ (default: matched from the UNet config)")
    anchor: str | None = opt(None, "what the concept is remapped to (default: per concept kind, printed)")
    kind: str | None = opt(None, "concept kind (default: guessed)", choices=["object", "nudity", "style"])
    out: str | None = opt(None, "delta file to write (CLI default: <concept>-<method>.safetensors)")
    kohya: str | None = opt(None, "also write a kohya/A1111/ComfyUI copy to this path (.safetensors)")
    steps: int | None = opt(None, "training steps", recipe="train.steps", final=200, lo=1, hi=MAX_STEPS)
    lr: float | None = opt(None, "learning rate", recipe="train.lr", final=1e-4, lo=0.0)
    batch_size: int | None = opt(None, "training batch size", recipe="train.batch_size", final=1, lo=1, hi=4096)
    grad_accum: int = opt(1, "gradient accumulation micro-steps per step", lo=1, hi=1024)
    forget_n: int | None = opt(None, "number of generated forget latents", recipe="train.forget_n", final=16, lo=1,
                               hi=MAX_FORGET_N)
    retain_n: int | None = opt(None, "number of generated retain latents (default: --forget-n)", recipe="train.retain_n",
                               lo=1, hi=MAX_FORGET_N)
    retain_weight: float | None = opt(None, "weight of the retain term (0 disables it)", recipe="train.retain_weight",
                                      final=0.0, lo=0.0, hi=1e6)
    anchor_share: float | None = opt(None, "extra anchor-image latents under the forget prompts, as a share of "
                                     "--forget-n", recipe="train.anchor_share", final=0.0, lo=0.0, hi=4.0)
    tau: float | None = opt(None, "SVD energy threshold for the rank", recipe="semu.tau", final=0.95, lo=0.0, hi=1.0)
    r_min: int | None = opt(None, "smallest rank per layer (0 lets a layer freeze, as the official code)",
                            recipe="semu.r_min", final=1, lo=0, hi=65536)
    r_max: int | None = opt(None, "largest rank per layer", recipe="semu.r_max", final=None, lo=1, hi=65536)
    project: bool | None = opt(None, "project the forget gradient orthogonally to W (--no-project skips it)",
                               recipe="semu.project", final=True)
    conv_mode: str | None = opt(None, "conv SVD: one per layer (flat, LoRA-shaped) or one per input channel "
                                "(per-channel, the reference code)", recipe="semu.conv_mode", final="flat",
                                choices=["flat", "per-channel"])
    retain_energy: float | None = opt(None, "SEMU: remove from the forget gradient, before the SVD, the retain "
                                      "gradient's leading directions that hold this share of its energy (0 = off)",
                                      recipe="semu.retain_energy", final=0.0, lo=0.0, hi=0.999)
    retain_side: str | None = opt(None, "which side of the retain gradient --retain-energy removes: input (in), "
                                  "output (out) or both", recipe="semu.retain_side", final="in",
                                  choices=["in", "out", "both"])
    retain_source: str | None = opt(None, "what --retain-energy avoids: the retain set's gradient (gradient) or the "
                                    "target layers' input activations on the retain set (activation; input side)",
                                    recipe="semu.retain_source", final="gradient", choices=["gradient", "activation"])
    retain_estimator: str | None = opt(None, "--retain-source activation: how each layer's leading retain input "
                                       "directions are found: the exact d x d input moment (exact), a one-pass "
                                       "randomized sketch of --retain-sketch columns, O(d x l) memory (sketch), or "
                                       "exact where that is no larger than the sketch, d <= 2 l (auto)",
                                       recipe="semu.retain_estimator", final="auto", choices=["auto", "exact", "sketch"])
    retain_sketch: int | None = opt(None, "sketch size l of --retain-estimator sketch/auto: at most l directions per "
                                    "sketched layer, 2 x d x l floats each", recipe="semu.retain_sketch", final=512,
                                    lo=8, hi=65536)
    retain_sketch_passes: int | None = opt(None, "passes over the retain inputs for the sketched layers: 2 adds one "
                                           "power iteration, so the leading directions are accurate up to the sketch "
                                           "size (1: one pass, as before; half the retain stage)",
                                           recipe="semu.retain_sketch_passes", final=2, lo=1, hi=2)
    save_dtype: str | None = opt(None, "dtype the delta's factors are stored in (fp16 halves the file; the "
                                 "provenance records it)", recipe="train.save_dtype", final="fp32",
                                 choices=["fp32", "fp16", "bf16"])
    remap_target: str | None = opt(None, "remap target: the frozen base model's anchor prediction (base) or the "
                                   "current model's, detached (current, the official SEMU code)",
                                   recipe="train.remap_target", final="base", choices=["base", "current"])
    stop_every: int | None = opt(None, "every N steps, judge a few fixed-seed images of the forget prompts and stop "
                                 "training once the concept is gone (0 = always train --steps)",
                                 recipe="train.stop_every", final=0, lo=0, hi=MAX_STEPS)
    stop_samples: int | None = opt(None, "images judged at each --stop-every check", recipe="train.stop_samples",
                                   final=8, lo=1, hi=1024)
    stop_detection: float | None = opt(None, "stop when at most this share of them shows the concept",
                                       recipe="train.stop_detection", final=0.0, lo=0.0, hi=1.0)
    stop_judge: str | None = opt(None, "judge for --stop-every (as semu-eval --judge; default: toy for the toy "
                                 "model, nudenet for nudity, else clip:ViT-B-32:openai)", recipe="train.stop_judge")
    forget_prompts: str | None = opt(None, "file of forget prompts (one per line) instead of templates")
    forget_modifiers: str | None = opt(None, "object concepts: comma-separated modifier words (e.g. colours), each adds "
                                       "a modified forget prompt paired with the same modifier on the anchor, so the "
                                       "erasure holds under modified prompts too ('' = none, as the papers)",
                                       recipe="train.forget_modifiers", final="")
    forget_bare: bool | None = opt(None, "object concepts: add the bare concept word as a forget prompt ('star', ESD's "
                                   "own prompt), paired with the bare anchor, so the erasure holds without a template "
                                   "around the word (--no-forget-bare: the templates only, as the papers)",
                                   recipe="train.forget_bare", final=False)
    forget_images: str | None = opt(None, "folder of images of the concept (VAE-encoded) instead of generated latents")
    retain_prompts: Any = opt(None, "file of prompts whose outputs must not change")
    curriculum: bool = opt(False, "order forget samples easy->hard (CUFG pacing)")
    cufg: bool = opt(False, "CUFG gradient corrector: where the forget and retain gradients conflict (cosine < 0), "
                     "remove the forget gradient's component along the retain gradient (needs a retain term)")
    esd_trajectory: bool = opt(False, "ESD: take x_t from the base model's DDIM sampling trajectory under the concept "
                               "(50 steps, guidance 3, as the official ESD code) instead of noising forget latents")
    robust: bool | None = opt(None, "SEMU robust mode: adversarial training inside SEMU's subspace against "
                              "whole-prompt-embedding attacks (an inner embedding attack on the model being trained, "
                              "refreshed every --robust-every steps; the outer loop keeps the concept erased under "
                              "the conditionings it finds)", recipe="train.robust", final=False)
    robust_every: int | None = opt(None, "--robust: refresh the adversarial conditionings every N training steps",
                                   recipe="train.robust_every", final=5, lo=1, hi=MAX_STEPS)
    robust_inner: int | None = opt(None, "--robust: embedding-attack steps per refresh (warm-started: the attack "
                                   "accumulates over the run)", recipe="train.robust_inner", final=5, lo=1, hi=10_000)
    robust_n: int | None = opt(None, "--robust: adversarial conditionings kept (each starts from a forget prompt's)",
                               recipe="train.robust_n", final=4, lo=1, hi=256)
    robust_lr: float | None = opt(None, "--robust: Adam learning rate of the inner attack (as semu-attack's "
                                  "embedding attack)", recipe="train.robust_lr", final=1e-2, lo=0.0, hi=10.0)
    robust_weight: float | None = opt(None, "--robust: weight of the adversarial remap term",
                                      recipe="train.robust_weight", final=1.0, lo=0.0, hi=1e6)
    robust_restart: int | None = opt(None, "--robust: every N refreshes, put one adversarial conditioning (in turn) "
                                     "back to its forget prompt's, so the adversary keeps covering attacks that start "
                                     "from the concept prompt (0: never)", recipe="train.robust_restart", final=2,
                                     lo=0, hi=MAX_STEPS)
    mixed_precision: str = opt("no", "autocast precision (trainable parameters stay fp32)", choices=["no", "fp16", "bf16"])
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda if available)")
    seed: int = opt(0, "random seed", lo=0, hi=2**31 - 1)
    targets: str | None = opt(None, "regex over UNet module names replacing the recipe's targets")
    resolution: int | None = opt(None, "image resolution of the forget set (pixels, multiple of 8)",
                                 recipe="generate.resolution", final=None, lo=8, hi=MAX_RESOLUTION)
    gen_steps: int | None = opt(None, "sampler steps for generating the forget set", recipe="generate.steps",
                                final=25, lo=1, hi=1000)
    guidance_scale: float | None = opt(None, "classifier-free guidance of the forget-set generation",
                                       recipe="generate.guidance_scale", final=7.5, lo=0.0, hi=100.0)
    method_options: dict | None = opt(None, "method-specific options (salun_share, sap_share, sap_probes, ...)", cli=False)

    def __post_init__(self):
        if self.method is None:
            self.method = PAPER_PRESETS[self.preset]["method"] if self.preset in PAPER_PRESETS else "semu"
        check(self)

    # ---- derived views -------------------------------------------------------------------------------------
    def provenance(self) -> dict:
        """Every option as recorded in the delta (file paths by name only)."""
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("out", "kohya", "model", "concept"):
                continue
            if f.name in ("forget_prompts", "forget_images", "retain_prompts") and isinstance(v, (str, os.PathLike)):
                v = Path(v).name
            d[f.name] = v
        return d


def option_fields() -> list:
    return list(fields(EraseConfig))


# ---- validation ------------------------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bad(name: str, msg: str) -> ConfigError:
    return ConfigError(f"{_flag(name)} {msg}")


def check(c: EraseConfig) -> None:
    """Check every option of ``c``; raises :class:`ConfigError` naming the first bad one."""
    if c.concept is None or not isinstance(c.concept, str) or not c.concept.strip():
        raise ConfigError("empty --concept: pass the word or phrase to erase, e.g. --concept triangle")
    if isinstance(c.anchor, str) and " ".join(c.anchor.split()).lower() == " ".join(c.concept.split()).lower():
        raise ConfigError(f"concept {c.concept!r} is its own anchor (--anchor {c.anchor!r}): the remap would erase "
                          "nothing; pass another --anchor (or none for the default)")
    for f in fields(c):
        v = getattr(c, f.name)
        if v is None:
            continue
        md = f.metadata
        tp = str(f.type)
        if tp.startswith("bool"):
            if not isinstance(v, bool):
                raise _bad(f.name, f"must be true or false, got {v!r}")
        elif tp.startswith("int"):
            if isinstance(v, bool) or not isinstance(v, int):
                raise _bad(f.name, f"must be a whole number, got {v!r}")
        elif tp.startswith("float"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _bad(f.name, f"must be a number, got {v!r}")
            if not math.isfinite(v):
                raise _bad(f.name, f"must be a finite number, got {v}")
        elif tp.startswith("str"):
            if not isinstance(v, (str, os.PathLike)):
                raise _bad(f.name, f"must be text, got {type(v).__name__}")
        lo, hi = md.get("lo"), md.get("hi")
        if lo is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
            strict = f.name in ("lr", "tau")
            if v < lo or (strict and v == lo):
                raise _bad(f.name, f"must be {'>' if strict else '>='} {lo}, got {v}")
            if hi is not None and v > hi:
                extra = ""
                if f.name == "steps":
                    extra = (f" ({v:,} steps would run for days: about {v * 0.1 / 3600:,.0f} h even at 0.1 s/step on "
                             "the toy model)")
                raise _bad(f.name, f"must be <= {hi:,}, got {v:,}{extra}")
        if md.get("choices") and v not in md["choices"]:
            raise _bad(f.name, f"must be one of {', '.join(map(str, md['choices']))}, got {v!r}")
    from .methods import available_methods

    if c.method not in available_methods():
        raise ConfigError(f"unknown method {c.method!r}: choose one of {', '.join(available_methods())}")
    if c.preset and PAPER_PRESETS[c.preset]["method"] != c.method:
        raise ConfigError(f"--preset {c.preset} is for method {PAPER_PRESETS[c.preset]['method']}, not {c.method}: "
                          f"pass --method {PAPER_PRESETS[c.preset]['method']} or drop --method")
    if c.recipe is not None:
        from .recipes import all_recipes

        names = sorted(all_recipes())
        if c.recipe not in names:
            raise ConfigError(f"unknown --recipe {c.recipe!r}: choose one of {', '.join(names)}")
    if c.r_max is not None and c.r_min is not None and c.r_max < c.r_min:
        raise ConfigError(f"--r-max ({c.r_max}) must be >= --r-min ({c.r_min})")
    if c.resolution is not None and c.resolution % 8:
        raise ConfigError(f"--resolution must be a multiple of 8 (the VAE downsamples by 8), got {c.resolution}")
    if c.targets is not None:
        try:
            re.compile(c.targets)
        except re.error as e:
            raise ConfigError(f"--targets {c.targets!r} is not a valid regular expression ({e})") from None
    _check_device(c)
    _check_stop(c)
    if c.kohya is not None and (c.method != "semu" or c.conv_mode == "per-channel" or c.preset == "semu-paper"):
        raise ConfigError("--kohya needs a LoRA-shaped delta (--method semu with --conv-mode flat, no semu-paper "
                          "preset): drop --kohya")
    if c.method_options is not None and not (isinstance(c.method_options, dict)
                                             and all(isinstance(k, str) for k in c.method_options)):
        raise ConfigError("method_options must be a dict with text keys")
    _check_inputs(c)
    _check_outputs(c)


def _check_stop(c: EraseConfig) -> None:
    """The early-stop judge spec's syntax (whether its weights are here is checked by building it, still before
    the model loads)."""
    if c.stop_judge is not None:
        from .evaluation.judges.base import parse_judge_spec

        try:
            parse_judge_spec(c.stop_judge)
        except ValueError as e:
            raise ConfigError(f"--stop-judge: {str(e).splitlines()[0]}") from None


def check_given(c: EraseConfig) -> EraseConfig:
    """Checks of what the user gave (not of recipe-filled values): an early-stop option without ``--stop-every``
    would be ignored, so it is refused."""
    if not c.stop_every:
        given = [_flag(n) for n in ("stop_judge", "stop_samples", "stop_detection") if getattr(c, n) is not None]
        if given:
            raise ConfigError(f"{given[0]} applies to the early stop only: add --stop-every N (or drop {given[0]})")
    return c


def _check_device(c: EraseConfig) -> None:
    import torch

    dev = c.device
    if dev is not None:
        if not isinstance(dev, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", dev):
            raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {dev!r}")
        if dev.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ConfigError(f"--device {dev}: no CUDA GPU is available here; use --device cpu")
            idx = int(dev.split(":")[1]) if ":" in dev else 0
            if idx >= torch.cuda.device_count():
                raise ConfigError(f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s) here")
    on_cpu = (dev or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    if c.mixed_precision == "fp16" and on_cpu:
        raise ConfigError("--mixed-precision fp16 needs a CUDA GPU (fp16 autocast is not supported for training on "
                          "CPU): use --mixed-precision bf16 or no on CPU")


def _check_inputs(c: EraseConfig) -> None:
    if c.forget_prompts is not None:
        _readable_file("forget_prompts", c.forget_prompts)
    if isinstance(c.retain_prompts, (str, os.PathLike)):
        _readable_file("retain_prompts", c.retain_prompts)
    elif c.retain_prompts is not None and not (isinstance(c.retain_prompts, (list, tuple))
                                               and all(isinstance(p, str) for p in c.retain_prompts)):
        raise ConfigError("retain_prompts must be a file path or a list of prompts")
    if c.forget_images is not None:
        image_files(c.forget_images)


def _readable_file(name: str, path) -> None:
    p = Path(path)
    if not p.exists():
        raise _bad(name, f"{p} not found: pass a text file with one prompt per line")
    if p.is_dir():
        raise _bad(name, f"{p} is a folder: pass a text file with one prompt per line")
    try:
        p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(name, f"{p} cannot be read as UTF-8 text ({type(e).__name__}): pass a plain text prompt file") from None


def image_files(folder, flag: str = "--forget-images", error: type[Exception] | None = None) -> list[Path]:
    """The readable images in ``folder`` (each opened and verified); raises ``error`` (ConfigError) naming the bad one."""
    from PIL import Image

    err = error or ConfigError
    p = Path(folder)
    if not p.exists():
        raise err(f"{flag} {p} not found: pass a folder of .png/.jpg images of the concept")
    if not p.is_dir():
        raise err(f"{flag} {p} is a file, not a folder: pass a folder of .png/.jpg images")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise err(f"{flag} {p} holds no .png/.jpg/.webp images: pass a folder of images of the concept")
    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except Exception as e:  # PIL raises many types for damaged files
            raise err(f"{flag}: {f.name} is not a readable image ({type(e).__name__}): remove or replace it") from None
    return files


def _check_outputs(c: EraseConfig) -> None:
    outs = [(n, getattr(c, n)) for n in ("out", "kohya") if getattr(c, n) is not None]
    for name, v in outs:
        check_output_path(name, v)
    if len(outs) == 2 and os.path.abspath(outs[0][1]) == os.path.abspath(outs[1][1]):
        raise ConfigError("--kohya must differ from --out: the kohya copy would overwrite the delta")


def check_output_path(name: str, path) -> None:
    """An output file: .safetensors, not a folder, a name the file system accepts, in an existing writable folder."""
    s = os.fspath(path)
    p = Path(s)
    if not s.endswith(".safetensors"):
        raise _bad(name, f"{s} must end in .safetensors")
    if len(p.name.encode()) > 255:
        raise _bad(name, f"file name is {len(p.name.encode())} bytes long (the limit is 255): choose a shorter name")
    if len(os.path.abspath(s).encode()) > 4000:
        raise _bad(name, "path is too long for the file system: choose a shorter one")
    if p.is_dir():
        raise _bad(name, f"{s} is a folder: name a .safetensors file inside it")
    d = os.path.dirname(os.path.abspath(s))
    if not os.path.isdir(d):
        raise ConfigError(f"output folder {d} does not exist: create it or choose another {_flag(name)}")
    if not os.access(d, os.W_OK):
        raise ConfigError(f"output folder {d} is not writable: choose another {_flag(name)}")
    if p.exists() and not os.access(s, os.W_OK):
        raise _bad(name, f"{s} exists and is not writable: choose another path")


def default_out_name(concept: str, method: str) -> str:
    """A safe default file name: the concept's ASCII letters/digits, at most 60 of them (+ a short hash of the whole
    concept when shortened or when nothing is left)."""
    c = concept.strip()
    slug = re.sub(r"[^\w.-]+", "_", c, flags=re.ASCII).strip("._-")
    if len(slug) > 60 or not slug:
        slug = (slug[:60].rstrip("._-") or "concept") + "-" + hashlib.sha1(c.encode()).hexdigest()[:8]
    return f"{slug}-{method}.safetensors"


# ---- recipe merge ----------------------------------------------------------------------------------------------
def resolve(c: EraseConfig, recipe) -> EraseConfig:
    """Fill every unset option: explicit value > paper preset > recipe [methods.<method>] > recipe section > default.

    Returns a new, fully resolved and re-checked config."""
    preset = PAPER_PRESETS.get(c.preset or "", {})
    mdef = dict(recipe.methods.get(c.method, {})) if recipe is not None else {}
    sections = {"train": recipe.train, "semu": recipe.semu, "generate": recipe.generate} if recipe is not None else {}
    upd = {}
    for f in fields(c):
        if getattr(c, f.name) is not None:
            continue
        if f.name in preset:
            upd[f.name] = preset[f.name]
            continue
        key = f.metadata.get("recipe")
        if key is None:
            continue
        sec, k = key.split(".")
        if sec == "train" and k in mdef:
            upd[f.name] = mdef[k]
        elif k in sections.get(sec, {}):
            upd[f.name] = sections[sec][k]
        else:
            upd[f.name] = f.metadata.get("final")
    opts = {k: v for k, v in mdef.items() if k not in {f.metadata["recipe"].split(".")[1] for f in fields(c)
                                                         if f.metadata.get("recipe")}}
    upd["method_options"] = {**opts, **preset.get("method_options", {}), **(c.method_options or {})}
    r = copy.copy(c)  # the values were checked by __post_init__; check the merged ones once, here
    for k, v in upd.items():
        setattr(r, k, v)
    check(r)
    if r.kohya is not None and (r.method != "semu" or r.conv_mode != "flat"):
        raise ConfigError("--kohya needs a LoRA-shaped delta (--method semu with --conv-mode flat); "
                          f"{r.method} with conv mode {r.conv_mode} writes dense updates: drop --kohya")
    if r.esd_trajectory and not r.method.startswith("esd"):
        raise ConfigError("--esd-trajectory applies to --method esd-x or esd-u only")
    if r.retain_source == "activation" and r.retain_energy and r.retain_side != "in":
        raise ConfigError("--retain-source activation removes input directions only: use --retain-side in")
    if r.robust and r.method != "semu":
        raise ConfigError(f"--robust is SEMU's adversarial mode: use --method semu (got {r.method}) or drop --robust")
    if r.cufg and not r.retain_weight:
        raise ConfigError("--cufg corrects the forget gradient against the retain gradient: set --retain-weight > 0")
    return r


def config_from_kwargs(**kw) -> EraseConfig:
    """Build a config from ``erase()`` keyword arguments, naming an unknown one."""
    names = {f.name for f in fields(EraseConfig)}
    unknown = sorted(set(kw) - names)
    if unknown:
        raise TypeError(f"erase() got unknown option(s) {', '.join(unknown)}")
    return check_given(EraseConfig(**kw))


def add_cli_flags(parser) -> None:
    """One argparse flag per EraseConfig field with ``cli`` metadata (type, default None = unset, help)."""
    import argparse

    for f in fields(EraseConfig):
        md = f.metadata
        if not md.get("cli"):
            continue
        flag = md.get("flag") or _flag(f.name)
        tp = str(f.type)
        kw: dict = {"help": md.get("help") or None}
        dflt = f.default if f.default is not MISSING else None
        if tp.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, **kw)
            continue
        if tp.startswith("int"):
            kw["type"] = int
        elif tp.startswith("float"):
            kw["type"] = float
        if md.get("choices"):
            kw["choices"] = md["choices"]
        if md.get("final") is not None or dflt is not None:
            shown = md.get("final") if md.get("recipe") else dflt
            kw["help"] = f"{kw['help']} (default: {'recipe, else ' if md.get('recipe') else ''}{shown})"
        elif md.get("recipe"):
            kw["help"] = f"{kw['help']} (default: the recipe's)"
        parser.add_argument(flag, default=None, **kw)


def config_from_args(args) -> EraseConfig:
    """The EraseConfig from parsed CLI args (unset flags stay None so the recipe can fill them)."""
    kw = {}
    for f in fields(EraseConfig):
        if not f.metadata.get("cli"):
            continue
        v = getattr(args, f.name, None)
        if v is None:
            continue
        kw[f.name] = v
    return check_given(EraseConfig(**kw))


def warn_large_work(c: EraseConfig) -> None:
    """A warning (no prompt) when the run is long: > 20,000 micro-steps."""
    n = (c.steps or 0) * (c.grad_accum or 1)
    if n > 20_000:
        warnings.warn(f"{n:,} training micro-steps: expect about {n * 0.1 / 3600:.1f} h on the toy model and much more "
                      "on SD-scale models", stacklevel=2)
