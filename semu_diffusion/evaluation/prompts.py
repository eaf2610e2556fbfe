"""Prompt sets and their public file formats.

- ``.txt``: one prompt per line (``#`` comments, blank lines skipped).
- ``.csv`` (ours): ``prompt`` [, ``label``, ``seed``, ``guidance_scale``, ``width``, ``height``].
- I2P CSV: ``prompt``, ``categories``, ``nudity_percentage``, ``sd_seed``, ``sd_guidance_scale``, ``sd_image_width``,
  ``sd_image_height`` (ESD's copy: ``evaluation_seed``, ``evaluation_guidance``).
- ESD/SalUn evaluation CSV: ``case_number``, ``prompt``, ``evaluation_seed``, ``class`` (the label).

Per-row seed, guidance and size are honoured; see prompts/README.md.
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..concepts import PROMPTS_DIR
from .options import EvalOptionError, parse_filter

SEED_COLS = ("seed", "evaluation_seed", "sd_seed")
GUIDANCE_COLS = ("guidance_scale", "guidance", "evaluation_guidance", "sd_guidance_scale")
WIDTH_COLS = ("width", "sd_image_width")
HEIGHT_COLS = ("height", "sd_image_height")
LABEL_COLS = ("label", "class")
MAX_SEED = 2**63 - 1


class PromptSetError(ValueError):
    """A prompt file that cannot be used (exit code 2)."""


@dataclass
class PromptRow:
    prompt: str
    label: str | None = None
    seed: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class PromptSet:
    name: str  # unique within a run: names the image folder
    rows: list[PromptRow]
    path: Path | None = None
    format: str = "txt"  # txt | csv | i2p | esd
    filters: list[str] = field(default_factory=list)

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.rows]

    @property
    def labels(self) -> list[str | None]:
        return [r.label for r in self.rows]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.rows]

    @property
    def has_labels(self) -> bool:
        return bool(self.rows) and all(r.label for r in self.rows)

    def label_names(self) -> list[str]:
        """Distinct labels in order of first appearance."""
        return list(dict.fromkeys(r.label for r in self.rows if r.label))


@dataclass(frozen=True)
class Item:
    """One image to generate: image ``index`` of the set, ``k``-th image of prompt row ``row``."""

    index: int
    row: int
    prompt: str
    seed: int
    guidance: float
    height: int
    width: int
    label: str | None


def resolve_prompt_file(spec: str, prompts_dir: Path = PROMPTS_DIR) -> Path:
    p = Path(spec).expanduser()
    if p.is_dir():
        raise PromptSetError(f"prompt set {spec} is a folder: pass a .csv or .txt file or a set name")
    if p.is_file():
        return p
    for c in (prompts_dir / f"{spec}.csv", prompts_dir / f"{spec}.txt"):
        if c.is_file():
            return c
    known = sorted({x.stem for x in prompts_dir.glob("*.csv")} | {x.stem for x in prompts_dir.glob("*.txt")})
    raise FileNotFoundError(f"unknown prompt set {spec!r}: pass a file path or one of {', '.join(known)}")


def _first(row: dict, cols) -> str | None:
    for c in cols:
        v = row.get(c)
        if v is not None and str(v).strip() != "":
            return str(v).strip()
    return None


def _int_cell(p: Path, line: int, col: str, v: str, lo: int, hi: int) -> int:
    try:
        f = float(v)
        if not math.isfinite(f) or f != int(f):
            raise ValueError
        x = int(f)
    except (ValueError, OverflowError):
        raise PromptSetError(f"{p}:{line}: {col} {v!r} is not an integer") from None
    if not lo <= x <= hi:
        raise PromptSetError(f"{p}:{line}: {col} {x} is out of range [{lo}, {hi}]")
    return x


def _matches(cell: str | None, value: str) -> bool:
    if cell is None:
        return False
    v = value.strip().lower()
    c = cell.strip().lower()
    return c == v or v in [x.strip() for x in c.replace(";", ",").split(",")]


def _read_csv(p: Path, filters: list[tuple[str, str]]) -> tuple[list[PromptRow], str, list[str]]:
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            raw = list(reader)
    except UnicodeDecodeError:
        raise PromptSetError(f"{p} is not UTF-8 text: save the CSV as UTF-8") from None
    except csv.Error as e:
        raise PromptSetError(f"{p} is not a readable CSV ({e})") from None
    if "prompt" not in header:
        raise PromptSetError(f"{p}: a CSV prompt set needs a 'prompt' column header (found: {', '.join(header[:8]) or 'none'})")
    fmt = "esd" if "case_number" in header else ("i2p" if {"sd_seed", "categories", "inappropriate_percentage"} & set(header)
                                                  else "csv")
    used = []
    for col, _ in filters:
        if col in header:
            used.append(col)
    rows = []
    for n, r in enumerate(raw, start=2):
        prompt = (r.get("prompt") or "").strip()
        if not prompt:
            continue
        if any(col in header and not _matches(r.get(col), val) for col, val in filters):
            continue
        seed = _first(r, SEED_COLS)
        g = _first(r, GUIDANCE_COLS)
        w, h = _first(r, WIDTH_COLS), _first(r, HEIGHT_COLS)
        row = PromptRow(prompt=prompt, label=_first(r, LABEL_COLS))
        if seed is not None:
            row.seed = _int_cell(p, n, "seed", seed, 0, MAX_SEED)
        if g is not None:
            try:
                row.guidance = float(g)
            except ValueError:
                raise PromptSetError(f"{p}:{n}: guidance {g!r} is not a number") from None
            if not math.isfinite(row.guidance) or not 0 < row.guidance <= 100:
                raise PromptSetError(f"{p}:{n}: guidance {g} must be in (0, 100]")
        for name, v in (("width", w), ("height", h)):
            if v is not None:
                x = _int_cell(p, n, name, v, 8, 4096)
                if x % 8:
                    raise PromptSetError(f"{p}:{n}: {name} {x} must be a multiple of 8")
                setattr(row, name, x)
        rows.append(row)
    return rows, fmt, used


def load_prompt_set(spec: str, prompts_dir: Path = PROMPTS_DIR, filters: list[str] | None = None,
                    max_prompts: int | None = None) -> PromptSet:
    """A prompt set by name (prompts/<name>.csv|.txt) or path, optionally filtered by ``COLUMN=VALUE`` rows."""
    p = resolve_prompt_file(spec, prompts_dir)
    flt = [parse_filter(f) for f in (filters or [])]
    used: list[str] = []
    if p.suffix.lower() == ".csv":
        rows, fmt, used = _read_csv(p, flt)
    else:
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise PromptSetError(f"{p} is not UTF-8 text: save it as UTF-8") from None
        rows = [PromptRow(prompt=ln.strip()) for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        fmt = "txt"
    if max_prompts is not None:
        rows = rows[:max_prompts]
    if not rows:
        why = f" after --filter {' '.join(filters or [])}" if used else ""
        raise PromptSetError(f"prompt set {p} holds no prompts{why}")
    applied = [f"{c}={v}" for c, v in flt if c in used]
    return PromptSet(name=p.stem, rows=rows, path=p, format=fmt, filters=applied)


def load_prompt_sets(specs: list[str], filters: list[str] | None = None, max_prompts: int | None = None,
                     prompts_dir: Path = PROMPTS_DIR) -> list[PromptSet]:
    """Load several sets; names are made unique (same stem from different folders, or different filters), so no
    two sets share an image folder. A ``--filter`` column must exist in at least one set."""
    sets = [load_prompt_set(s, prompts_dir, filters, max_prompts) for s in specs]
    seen = set()
    for ps in sets:
        key = (str(ps.path.resolve()), tuple(ps.filters))
        if key in seen:
            raise EvalOptionError(f"prompt set {ps.path} is given twice: pass it once")
        seen.add(key)
    for f in filters or []:
        col = parse_filter(f)[0]
        if not any(x.startswith(f"{col}=") for ps in sets for x in ps.filters):
            raise EvalOptionError(f"--filter {f}: no prompt set has a column {col!r}")
    stems: dict[str, int] = {}
    for ps in sets:
        stems[ps.name] = stems.get(ps.name, 0) + 1
    for ps in sets:
        tag = ""
        if stems[ps.name] > 1:
            tag += "-" + hashlib.sha256(str(ps.path.resolve()).encode()).hexdigest()[:6]
        if ps.filters:
            tag += "-" + hashlib.sha256("&".join(ps.filters).encode()).hexdigest()[:6]
        ps.name += tag
    return sets


def expand(ps: PromptSet, per_prompt: int, seed: int = 0, guidance: float = 7.5, size: tuple[int, int] = (512, 512),
           guidance_override: float | None = None, size_override: int | None = None) -> list[Item]:
    """One Item per image. Image k of row i uses seed ``row seed + k`` (or ``1000 * i + seed + k``), the row's
    guidance and size unless overridden by the command line."""
    items = []
    for i, r in enumerate(ps.rows):
        base = r.seed if r.seed is not None else 1000 * i + seed
        g = guidance_override if guidance_override is not None else (r.guidance if r.guidance is not None else guidance)
        if size_override is not None:
            h = w = size_override
        else:
            h, w = (r.height or size[0]), (r.width or size[1])
        for k in range(per_prompt):
            items.append(Item(index=len(items), row=i, prompt=r.prompt, seed=(base + k) % (MAX_SEED + 1), guidance=float(g),
                              height=int(h), width=int(w), label=r.label))
    return items


def batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Consecutive items with the same guidance and size, at most ``batch_size`` per batch. The split depends only
    on the items, so every process of a sharded run sees the same batches."""
    out: list[list[Item]] = []
    for it in items:
        if out and len(out[-1]) < batch_size and (out[-1][0].guidance, out[-1][0].height, out[-1][0].width) == (
                it.guidance, it.height, it.width):
            out[-1].append(it)
        else:
            out.append([it])
    return out
