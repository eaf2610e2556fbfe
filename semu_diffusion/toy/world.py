"""The procedural toy world: one coloured shape per image, captioned from templates.

Deterministic from a seed. Pure numpy + PIL so it runs anywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..text import article

# class name -> synonym (used in ~25% of captions of that class)
SHAPES: dict[str, str] = {
    "circle": "disc",
    "square": "tile",
    "triangle": "pyramid",
    "star": "pentagram",
    "cross": "plus",
    "heart": "valentine",
    "hexagon": "honeycomb",
    "diamond": "rhombus",
    "ring": "donut",
    "crescent": "moon",
}
SHAPE_NAMES: list[str] = list(SHAPES)
SYNONYMS: list[str] = [SHAPES[s] for s in SHAPE_NAMES]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (35, 60, 225),
    "yellow": (235, 205, 20),
    "purple": (140, 40, 190),
    "orange": (245, 125, 15),
}
COLOR_NAMES: list[str] = list(COLORS)

# Caption templates; {c} colour, {s} shape noun. Those without {c} drop the colour.
TEMPLATES: list[str] = [
    "a photo of a {c} {s}",
    "a {c} {s}",
    "a drawing of a {c} {s}",
    "an image of a {c} {s}",
    "a picture of a {c} {s}",
    "a photo of a {s}",
    "a {s}",
    "an image of a {s}",
]
SYNONYM_SHARE = 0.25


def caption(template: str, shape_word: str, color: str | None) -> str:
    return article(template.format(c=color or "", s=shape_word).replace("  ", " ").strip())


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    shape: int
    color: int
    caption: str


def _polygon(n: int, r: float, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star(r: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.42
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


def _heart(r: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(60):
        t = 2 * math.pi * k / 60
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17 * r, -(y + 2) / 17 * r))
    return pts


def _cross(r: float) -> list[tuple[float, float]]:
    a, b = r, r * 0.34
    return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]


def _rotate(pts, angle, cx, cy):
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill, bg) -> None:
    """Draw one shape of radius ~r centred at (cx, cy) onto a PIL canvas."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        ri = r * 0.55
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=bg)
    elif shape == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        off = r * 0.55
        dx, dy = off * math.cos(angle), off * math.sin(angle)
        rr = r * 0.85
        draw.ellipse([cx + dx - rr, cy + dy - rr, cx + dx + rr, cy + dy + rr], fill=bg)
    else:
        if shape == "square":
            pts = _polygon(4, r * 1.05, phase=math.pi / 4)
        elif shape == "diamond":
            pts = [(0, -r * 1.1), (r * 0.72, 0), (0, r * 1.1), (-r * 0.72, 0)]
        elif shape == "triangle":
            pts = _polygon(3, r * 1.1)
            pts = [(x, y + r * 0.15) for x, y in pts]
        elif shape == "hexagon":
            pts = _polygon(6, r, phase=0.0)
        elif shape == "star":
            pts = _star(r * 1.1)
        elif shape == "heart":
            pts = _heart(r * 1.1)
        elif shape == "cross":
            pts = _cross(r)
        else:
            raise ValueError(f"unknown shape {shape!r}")
        draw.polygon(_rotate(pts, angle, cx, cy), fill=fill)


def render(shape: int, color: int, rng: np.random.Generator, size: int = 32, supersample: int = 4) -> np.ndarray:
    """Render one image (size x size x 3 uint8) of a shape/colour with jittered pose and background."""
    big = size * supersample
    base = rng.uniform(185, 245)
    tint = rng.uniform(-12, 12, size=3)
    bg = tuple(int(np.clip(base + t, 0, 255)) for t in tint)
    col = np.array(COLORS[COLOR_NAMES[color]], dtype=np.float64) + rng.uniform(-18, 18, size=3)
    fill = tuple(int(v) for v in np.clip(col, 0, 255))
    img = Image.new("RGB", (big, big), bg)
    d = ImageDraw.Draw(img)
    r = big * rng.uniform(0.25, 0.36)
    cx = big / 2 + rng.uniform(-0.12, 0.12) * big
    cy = big / 2 + rng.uniform(-0.12, 0.12) * big
    name = SHAPE_NAMES[shape]
    angle = rng.uniform(-0.3, 0.3) if name != "crescent" else rng.uniform(0, 2 * math.pi)
    draw_shape(d, name, cx, cy, r, angle, fill, bg)
    img = img.resize((size, size), Image.BILINEAR if supersample == 1 else Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float64)
    # soft vertical gradient + pixel noise on the whole image
    grad = np.linspace(-1, 1, size)[:, None, None] * rng.uniform(-8, 8)
    arr = arr + grad + rng.normal(0, 2.0, size=arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def sample_caption(shape: int, color: int, rng: np.random.Generator) -> str:
    name = SHAPE_NAMES[shape]
    word = SHAPES[name] if rng.random() < SYNONYM_SHARE else name
    tpl = TEMPLATES[rng.integers(len(TEMPLATES))]
    return caption(tpl, word, COLOR_NAMES[color] if "{c}" in tpl else None)


def make_dataset(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """n samples: images (n,H,W,3) uint8, shape ids, colour ids, captions. Deterministic from seed."""
    rng = np.random.default_rng(seed)
    shapes = rng.integers(len(SHAPE_NAMES), size=n)
    colors = rng.integers(len(COLOR_NAMES), size=n)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    caps = []
    for i in range(n):
        images[i] = render(int(shapes[i]), int(colors[i]), rng, size=size)
        caps.append(sample_caption(int(shapes[i]), int(colors[i]), rng))
    return images, shapes, colors, caps


def color_oracle(images: np.ndarray) -> np.ndarray:
    """Pixel-statistics colour judge: mean RGB of the most saturated pixels -> nearest palette colour.

    images: (n,H,W,3) uint8. Returns colour ids (n,). Independent of any learned model.
    """
    x = images.astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    palette = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float64) / 255.0
    out = np.empty(len(images), dtype=np.int64)
    for i in range(len(images)):
        s = sat[i].reshape(-1)
        px = x[i].reshape(-1, 3)
        k = max(8, int(0.05 * len(s)))
        idx = np.argsort(s)[-k:]
        mean = px[idx].mean(0)
        out[i] = int(np.argmin(((palette - mean) ** 2).sum(-1)))
    return out
