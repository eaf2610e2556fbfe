"""Per-base-family recipes (pipelines/*.toml): which UNet modules SEMU targets, tau, ranks, lr, steps.

Recipes match a UNet by its config (``[match]``); a regex override replaces the target set.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore

import torch.nn as nn

RECIPES_DIR = Path(__file__).resolve().parent.parent / "pipelines"


@dataclass
class Recipe:
    family: str
    match: dict
    include: list[str]
    exclude: list[str] = field(default_factory=list)
    semu: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    generate: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)  # per-method overrides of [train] and method options
    config: str | None = None
    path: Path | None = None

    def __post_init__(self):
        if not self.include:
            raise ValueError(f"recipe {self.family!r}: [targets].include is empty")
        for rx in self.include + self.exclude:
            re.compile(rx)

    def matches(self, unet_config) -> bool:
        return all(unet_config.get(k) == v for k, v in self.match.items())

    def config_dir(self) -> Path | None:
        return (self.path.parent / self.config) if (self.config and self.path) else None


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    d = tomllib.loads(p.read_text())
    t = d.get("targets", {})
    return Recipe(family=d["model"]["family"], match=d.get("match", {}), include=list(t.get("include", [])),
                  exclude=list(t.get("exclude", [])), semu=d.get("semu", {}), train=d.get("train", {}),
                  generate=d.get("generate", {}), methods=d.get("methods", {}), config=d["model"].get("config"),
                  path=p)


def all_recipes(recipes_dir: Path = RECIPES_DIR) -> dict[str, Recipe]:
    if not recipes_dir.is_dir():
        raise FileNotFoundError(f"recipe folder {recipes_dir} not found: install semu-diffusion from its source tree (pip install -e .)")
    out = {}
    for p in sorted(recipes_dir.glob("*.toml")):
        r = load_recipe(p)
        out[r.family] = r
    return out


def recipe_for(unet_config, family: str | None = None) -> Recipe:
    """The recipe named ``family``, or the one whose [match] fits the UNet config."""
    recipes = all_recipes()
    if family:
        if family not in recipes:
            raise ValueError(f"unknown recipe {family!r}; choose one of {sorted(recipes)}")
        return recipes[family]
    hits = [r for r in recipes.values() if r.matches(unet_config)]
    if len(hits) != 1:
        raise ValueError(f"no single recipe matches this UNet (cross_attention_dim={unet_config.get('cross_attention_dim')}); "
                         f"pass --preset one of {sorted(recipes)} or --targets REGEX")
    return hits[0]


def select_targets(unet: nn.Module, include: list[str], exclude: list[str] | None = None) -> list[str]:
    """Names of the Linear/Conv2d modules whose name matches any include regex and no exclude regex."""
    inc = [re.compile(r) for r in include]
    exc = [re.compile(r) for r in (exclude or [])]
    names = []
    for name, m in unet.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        if any(r.search(name) for r in inc) and not any(r.search(name) for r in exc):
            names.append(name)
    return names


def unet_config_json(family: str) -> dict:
    """The real public UNet config of a base family, shipped in pipelines/configs/<family>/unet.json."""
    r = all_recipes()[family]
    d = r.config_dir()
    if d is None:
        raise ValueError(f"recipe {family!r} ships no config")
    cfg = json.loads((d / "unet.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}
