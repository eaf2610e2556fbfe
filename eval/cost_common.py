"""eval/cost.py's shared parts: the named target sets (--targets), what a target set is, the CUDA sync of a
timed step, the command line of cost.py run again in a fresh process, and writing a report."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from semu_diffusion import atomic  # noqa: E402

COST_SCRIPT = Path(__file__).resolve().with_name("cost.py")  # what child processes run

# named target sets for --targets (anything else is taken as a regex over UNet module names)
TARGET_SETS = {
    "conv-attn": r"attn2\.to_(q|k|v|out\.0)$|attentions\.\d+\.proj_(in|out)$|resnets\.\d+\.(conv1|conv2|conv_shortcut)$",
}


def resolve_targets(spec: str | None) -> str | None:
    """The regex of a --targets value (a TARGET_SETS name or a regex); None or '' or 'recipe' keeps the recipe's."""
    import re

    if spec in (None, "", "recipe"):
        return None
    rx = TARGET_SETS.get(spec, spec)
    try:
        re.compile(rx)
    except re.error as e:
        raise SystemExit(f"error: --targets {spec!r} is not a valid regular expression ({e}); "
                         f"pass a regex or one of {sorted(TARGET_SETS)}")
    return rx


def target_names(unet, targets: str | None = None) -> list[str]:
    """The target modules: those matching ``targets`` (a regex) if given, else the recipe's include/exclude, as
    erase() selects them."""
    from semu_diffusion.recipes import recipe_for, select_targets

    if targets:
        return select_targets(unet, [targets])
    rec = recipe_for(unet.config)
    return select_targets(unet, rec.include, rec.exclude)


def target_info(unet, targets: str | None = None) -> dict:
    """What a target set is: its regex (or the recipe's include list), its layers and their weight parameters (what
    `full` trains, and what its Adam state is three times of), biases apart."""
    from semu_diffusion.recipes import recipe_for

    names = target_names(unet, targets)
    rec = recipe_for(unet.config)
    mods = [unet.get_submodule(n) for n in names]
    return {"source": "--targets" if targets else f"recipe {rec.family}",
            "regex": targets if targets else "|".join(rec.include), "exclude": [] if targets else list(rec.exclude),
            "layers": len(names), "conv_layers": sum(m.weight.dim() == 4 for m in mods),
            "params": sum(m.weight.numel() for m in mods),
            "bias_params": sum(m.bias.numel() for m in mods if m.bias is not None),
            "unet_params": sum(p.numel() for p in unet.parameters())}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child_command(a, *args: str, extra_flags: tuple[str, ...] = ()) -> list[str]:
    """cost.py run again in a fresh process (its own peak RSS): ``a``'s arch, device and mixed precision, ``args``,
    then every sizing flag (and each of ``extra_flags``) that ``a`` sets."""
    cmd = [sys.executable, str(COST_SCRIPT), "--arch", a.arch, "--device", a.device,
           "--mixed-precision", a.mixed_precision, *args]
    for flag in ("--resolution", "--steps", "--forget-n", "--gen-steps", "--targets", *extra_flags):
        v = getattr(a, flag[2:].replace("-", "_"))
        if v is not None:
            cmd += [flag, str(v)]
    return cmd


def write_report(out_dir, name: str, rep: dict, md: str) -> None:
    """<out_dir>/<name>.json and .md (the folder made if missing), and the markdown printed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / f"{name}.json", rep)
    atomic.write_text(out / f"{name}.md", md)
    print(md)
