"""What the benchmark scripts share: their results folder, the resumable results file, the machine record, stacked
single-concept deltas, evaluation of one delta at a time, judging cached images again, and the before/after grid."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def add_run_args(p, name: str, seed: bool = True) -> None:
    """The options every toy benchmark shares: where results and work files go, the seed, extra erase options."""
    root = Path(__file__).resolve().parent.parent
    p.add_argument("--out-dir", default=str(root / "eval" / "results"))
    p.add_argument("--work-dir", default=str(root / "runs" / name))
    if seed:
        p.add_argument("--seed", type=int, default=0)
    p.add_argument("--erase-options", default="{}", help="JSON of extra erase options for every run (smoke tests)")


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}


def toy_weights_id() -> str:
    """Which toy weights a run measured: sha256 (first 16 hex) over the shipped toy pipeline's weight files."""
    import hashlib

    d = Path(__file__).resolve().parent.parent / "semu_diffusion" / "toy" / "weights" / "pipeline"
    h = hashlib.sha256()
    for f in sorted(d.rglob("*.safetensors")):
        h.update(f.relative_to(d).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def load_results(res_path: Path, empty: dict) -> dict:
    """The results file at ``res_path`` (a run picks up what an earlier one measured), or ``empty`` when there is none
    or it was measured on other toy weights: rows of other weights are never carried into a table. The returned
    results record the current weights under "toy_weights"."""
    wid = toy_weights_id()
    results = json.loads(Path(res_path).read_text()) if Path(res_path).exists() else {}
    if results and results.get("toy_weights") != wid:
        print(f"{res_path}: measured on other toy weights ({results.get('toy_weights', 'unrecorded')}; now {wid}): "
              "starting afresh", flush=True)
        results = {}
    return {**empty, **results, "toy_weights": wid}


_LOCKS: dict = {}  # work folder -> its open lock file, held by this process until it exits


def work_folder(work_dir, results: dict) -> Path:
    """``work_dir/toy-<weights id>`` (with ``deltas/`` made): deltas and images made on other toy weights are never
    read back. The folder is locked for this process: a second benchmark run on it (which would overwrite the
    evaluation images the first is reading) is refused."""
    import fcntl

    work = Path(work_dir) / f"toy-{results['toy_weights'][:8]}"
    (work / "deltas").mkdir(parents=True, exist_ok=True)
    if str(work.resolve()) in _LOCKS:
        return work
    f = open(work / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise SystemExit(f"{work} is in use by another benchmark run: wait for it to finish or pass another "
                         "--work-dir") from None
    _LOCKS[str(work.resolve())] = f
    return work


def open_results(out_dir, work_dir, name: str) -> tuple[Path, Path, Path, dict]:
    """Make ``out_dir`` and the work folder (``work_dir/toy-<weights id>``, so deltas and images made on other toy
    weights are never read back); read ``out_dir/<name>`` (see :func:`load_results`).
    Returns (out, work, results path, results with "rows" and the "machine" record)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / name
    results = load_results(res_path, {"rows": {}})
    work = work_folder(work_dir, results)
    results["machine"] = machine()
    return out, work, res_path, results


def single_delta(store: dict, concept: str, path: Path, erase_one, save) -> dict:
    """The single-concept delta of ``concept`` at ``path``: made by ``erase_one(concept, path)`` (an EraseResult)
    unless ``store`` (part of a results file) already records it; ``save()`` is called after a new erase."""
    s = store.get(concept)
    if s is None or not Path(s["path"]).exists():
        t0 = time.time()
        r = erase_one(concept, path)
        store[concept] = {"path": str(path), "seconds": time.time() - t0, "trainable_frac": r.stats["trainable_frac"],
                          "delta_bytes": r.stats["delta_bytes"], "rank_mean": r.stats.get("rank_mean")}
        save()
    return store[concept]


def stacked_delta(store: dict, concepts: list[str], single_path, erase_one, out_path: Path, save) -> dict:
    """One single-concept delta per concept (:func:`single_delta`, reused across sizes), folded with merge_deltas into
    ``out_path`` (exactly equal to stacking the adapters). Returns the row figures: seconds = the sum of the erases."""
    from semu_diffusion import merge_deltas

    ss = [single_delta(store, c, single_path(c), erase_one, save) for c in concepts]
    merge_deltas([s["path"] for s in ss], out_path)
    return {"seconds": sum(s["seconds"] for s in ss), "trainable_frac": sum(s["trainable_frac"] for s in ss),
            "single_delta_bytes_sum": sum(s["delta_bytes"] for s in ss), "rank_mean": None}


def evaluate(work: Path, delta, prompt_sets: list[str], per_prompt: int, seed: int, judges=None, fd: str = "clip",
             name: str = "eval") -> dict:
    """semu-eval of the base model and ``delta`` (None: the base alone) under ``work/name``: the per-set results.
    Images are cached there, so the base is generated once across calls and a rerun reads them back."""
    from semu_diffusion.evaluation import EvalConfig, run_eval

    cfg = EvalConfig(model="toy", deltas=[str(delta)] if delta else [], prompt_sets=prompt_sets, per_prompt=per_prompt,
                     out=str(work / name), seed=seed, judges=judges, fd=fd)
    return run_eval(cfg, log=lambda *x: None)["results"]


def cached_images(eval_dir: Path, variant: str, set_name: str | None = None) -> list[Path]:
    """The PNGs a semu-eval run under ``eval_dir`` made for ``variant`` (one prompt set, or all), in image order."""
    folder = Path(eval_dir) / "images" / variant
    return sorted((folder / set_name).glob("*.png") if set_name else folder.rglob("*.png"))


def load_images(files) -> "np.ndarray":
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def image_grid(rows: list[list], labels: list[str], path: Path, scale: int = 3, left: int = 90) -> None:
    """Write a PNG grid: one labelled row per list of images (uint8 HxWx3 arrays or image files), written atomically."""
    import numpy as np
    from PIL import Image, ImageDraw

    rows = [[im if isinstance(im, np.ndarray) else np.asarray(Image.open(im).convert("RGB")) for im in r] for r in rows]
    h, w = rows[0][0].shape[:2]
    n, pad = max(len(r) for r in rows), 2
    canvas = Image.new("RGB", (left + n * (w * scale + pad), len(rows) * (h * scale + pad)), "white")
    d = ImageDraw.Draw(canvas)
    for i, (lab, imgs) in enumerate(zip(labels, rows)):
        y = i * (h * scale + pad)
        d.text((4, y + h * scale // 2 - 5), lab, fill="black")
        for j, im in enumerate(imgs):
            canvas.paste(Image.fromarray(im).resize((w * scale, h * scale), Image.NEAREST), (left + j * (w * scale + pad), y))
    tmp = path.with_suffix(".tmp.png")
    canvas.save(tmp)
    os.replace(tmp, path)
