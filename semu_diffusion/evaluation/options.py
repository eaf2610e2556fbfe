"""The evaluation options (one dataclass) and the value checks that run before any work: every refusal is a
one-line ``EvalOptionError`` naming the option and the fix, raised before a model loads or a file is written."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EvalOptionError  # noqa: F401  (importable from here as before)
from .judges import parse_judge_spec

MAX_STEPS = 1000
MAX_PER_PROMPT = 10_000
MAX_BATCH = 4096
MAX_RESOLUTION = 4096
MAX_IMAGES = 2_000_000  # per run, all variants and sets together


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EvalOptionError(f"{name} must be an integer, got {value!r}{hint}")
    if lo is not None and value < lo or hi is not None and value > hi:
        rng = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
        raise EvalOptionError(f"{name} {value} is out of range: use a value {rng}{hint}")
    return value


def check_float(name: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hint: str = "") -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EvalOptionError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise EvalOptionError(f"{name} must be a finite number, got {value!r}{hint}")
    if lo is not None and (v < lo or (lo_open and v == lo)) or hi is not None and v > hi:
        left = "(" if lo_open else "["
        rng = f"{'>' if lo_open else '>='} {lo}" if hi is None else f"in {left}{lo}, {hi}]"
        raise EvalOptionError(f"{name} {value} is out of range: use a value {rng}{hint}")
    return v


def check_output_dir(name: str, path: str | os.PathLike) -> Path:
    """The folder can be created/written: it is not a file, and its nearest existing ancestor is a writable folder.
    Creates nothing."""
    p = Path(path).expanduser()
    if str(path).strip() == "":
        raise EvalOptionError(f"{name} is empty: name an output folder")
    if p.exists() and not p.is_dir():
        raise EvalOptionError(f"{name} {p} is a file, not a folder: choose another {name}")
    anc = p
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise EvalOptionError(f"output folder {p} cannot be written ({anc} is a file): choose another {name}")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise EvalOptionError(f"output folder {p} cannot be written ({anc} is not writable): choose another {name}")
    return p


def check_device(name: str, device: str | None) -> str | None:
    if device is None:
        return None
    import torch

    d = str(device).strip().lower()
    if d == "cpu":
        return d
    if d == "cuda" or d.startswith("cuda:"):
        idx = d.split(":", 1)[1] if ":" in d else "0"
        if not idx.isdigit():
            raise EvalOptionError(f"{name} {device!r} is not a device: use cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise EvalOptionError(f"{name} {device}: no CUDA GPU is available here: use --device cpu")
        if int(idx) >= torch.cuda.device_count():
            raise EvalOptionError(f"{name} {device}: only {torch.cuda.device_count()} CUDA device(s): use cuda:0..")
        return d
    if d == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EvalOptionError(f"{name} mps is not available here: use --device cpu")
        return d
    raise EvalOptionError(f"{name} {device!r} is not a supported device: use cpu, cuda, cuda:N or mps")


def parse_filter(spec: str) -> tuple[str, str]:
    if "=" not in spec:
        raise EvalOptionError(f"--filter {spec!r} must be COLUMN=VALUE, e.g. categories=sexual")
    col, val = spec.split("=", 1)
    if not col.strip() or not val.strip():
        raise EvalOptionError(f"--filter {spec!r} must be COLUMN=VALUE with both parts non-empty")
    return col.strip(), val.strip()


@dataclass
class EvalConfig:
    """Every semu-eval option. ``validate()`` (called by ``__post_init__``) refuses bad values before any work."""

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
    clip_model: str = "toy"  # "toy" or an open_clip model name: CLIP score and FD-CLIP features
    clip_pretrained: str | None = None
    judges: list[str] | None = None  # None: "toy" for the toy model, clip:<clip-model> otherwise
    nudenet_threshold: float = 0.6
    real_images: str | None = None
    kid_subset: int = 1000
    filters: list[str] = field(default_factory=list)
    resolution: int | None = None  # overrides the model default and per-row CSV sizes
    strength: float = 1.0
    device: str | None = None
    max_prompts: int | None = None
    allow_unverified: bool = False  # accept deltas without a base fingerprint

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise EvalOptionError("--model is empty: pass 'toy', a diffusers folder or a cached hub id")
        check_int("--per-prompt", self.per_prompt, 1, MAX_PER_PROMPT)
        if self.steps is not None:
            check_int("--steps", self.steps, 1, MAX_STEPS)
        if self.guidance_scale is not None:
            check_float("--guidance-scale", self.guidance_scale, 0.0, 100.0, lo_open=True,
                        hint=" (1 disables classifier-free guidance; SD uses 7.5)")
        check_int("--seed", self.seed, 0, 2**63 - 1)
        check_int("--batch-size", self.batch_size, 1, MAX_BATCH)
        check_int("--kid-subset", self.kid_subset, 2, 100_000)
        if self.max_prompts is not None:
            check_int("--max-prompts", self.max_prompts, 1)
        if self.resolution is not None:
            check_int("--resolution", self.resolution, 8, MAX_RESOLUTION)
            if self.resolution % 8:
                raise EvalOptionError(f"--resolution {self.resolution} must be a multiple of 8")
        check_float("--strength", self.strength, -10.0, 10.0)
        check_float("--nudenet-threshold", self.nudenet_threshold, 0.0, 1.0)
        if self.fd not in ("clip", "inception", "none"):
            raise EvalOptionError(f"--fd {self.fd!r}: choose clip, inception or none")
        if not self.prompt_sets:
            raise EvalOptionError("give at least one --prompts set")
        for s in self.prompt_sets:
            if not isinstance(s, str) or not s.strip():
                raise EvalOptionError("--prompts is empty: name a set in prompts/ or a .csv/.txt file")
            if Path(s).is_dir():
                raise EvalOptionError(f"--prompts {s} is a folder: pass a .csv or .txt prompt file or a set name")
        seen: dict[str, str] = {}
        for d in self.deltas:
            if not Path(d).is_file():
                raise EvalOptionError(f"--delta {d} " + ("is a folder" if Path(d).is_dir() else "not found")
                                      + ": pass a .safetensors delta written by semu-erase")
            key = str(Path(d).resolve())
            if key in seen:
                raise EvalOptionError(f"--delta {d} is given twice (also as {seen[key]}): list each delta once")
            seen[key] = d
        if self.real_images is not None:
            if not Path(self.real_images).is_dir():
                raise EvalOptionError(f"--real-images {self.real_images} is not a folder: pass a folder of png/jpg images")
        for f in self.filters:
            parse_filter(f)
        if self.forget_label is not None and not str(self.forget_label).strip():
            raise EvalOptionError("--forget-label is empty: name the erased class or leave it out")
        if self.clip_model != "toy" and not str(self.clip_model).strip():
            raise EvalOptionError("--clip-model is empty: use 'toy' or an open_clip model name")
        for j in self.judges or []:
            parse_judge_spec(j)
        self.device = check_device("--device", self.device)
        check_output_dir("--out", self.out)

    def judge_specs(self) -> list[str]:
        if self.judges:
            return list(dict.fromkeys(self.judges))
        if self.model == "toy":  # toy-CLIP, and the exposure detector where a set is about nudity
            nude = any(str(p).startswith("toy_i2p") or "nudity" in str(p) for p in self.prompt_sets) or \
                (self.forget_label or "").lower() in ("nudity", "nude", "naked")
            return ["toy"] + (["toy-nudity"] if nude else [])
        if self.clip_model != "toy":
            return [f"clip:{self.clip_model}" + (f":{self.clip_pretrained}" if self.clip_pretrained else "")]
        return []
