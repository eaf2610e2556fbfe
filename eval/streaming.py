"""Streaming-evaluation benchmark: semu-eval over >= 1,000 prompts (--per-prompt 1) on the toy model, with the
default judge (toy-CLIP), FD-CLIP and CLIP score. Measures images/s and the resident memory over the run (sampled
every 0.2 s): peak RSS, RSS once the models are loaded, and its growth while the images stream through.
Writes eval/results/streaming.{json,md}.

    python eval/streaming.py [--n-prompts 1000] [--steps 25] [--batch-size 64]

`--judges-demo [--delta D]` instead runs one evaluation per judge on the toy model and on a random-weight SD-1.5 at
64 px (its real architecture, see semu_diffusion/fullsize.py) and writes eval/results/streaming.judges.{json,md}:
NudeNet counts, the one-line errors of the clip/imagenet judges without their weights here, and their code run on
randomly initialised models (accuracy at chance: it shows the path works, not a quality figure).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from semu_diffusion import atomic  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-prompts", type=int, default=1000)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="eval folder (default: a temporary folder, removed afterwards)")
    p.add_argument("--results", default=str(ROOT / "eval" / "results"))
    p.add_argument("--judges-demo", action="store_true")
    p.add_argument("--delta", default=None, help="(--judges-demo) a toy delta to evaluate beside the base model")
    a = p.parse_args(argv)
    if a.judges_demo:
        return judges_demo(a)
    os.environ.setdefault("SEMU_EVAL_PROGRESS", "0")
    import torch

    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.evaluation import EvalConfig, run_eval
    from semu_diffusion.toy import world

    _quiet_libraries()
    tmp = Path(tempfile.mkdtemp(prefix="semu-stream-"))
    csv = tmp / "stream_prompts.csv"
    rows = ["prompt,label,seed"]
    tpls = ["a photo of a {c} {s}", "a {c} {s}", "an image of a {c} {s}", "a picture of a {c} {s}"]
    for i in range(a.n_prompts):
        s = world.SHAPE_NAMES[i % len(world.SHAPE_NAMES)]
        c = world.COLOR_NAMES[(i // len(world.SHAPE_NAMES)) % len(world.COLOR_NAMES)]
        t = tpls[(i // 60) % len(tpls)]
        rows.append(f"{world.caption(t, s, c)},{s},{10_000 + i}")
    csv.write_text("\n".join(rows) + "\n")
    out = Path(a.out) if a.out else tmp / "eval"
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            samples.append((time.time(), rss_mb()))
            time.sleep(0.2)

    rss_start = rss_mb()
    load_start = os.getloadavg()[0]
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t0 = time.time()
    rep = run_eval(EvalConfig(prompt_sets=[str(csv)], per_prompt=1, steps=a.steps, batch_size=a.batch_size, out=str(out),
                              forget_label="triangle"), log=lambda *x: None)
    wall = time.time() - t0
    stop.set()
    th.join()
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gen_t0 = t0 + rep["timing"]["seconds"] - rep["timing"]["generate_seconds"]  # setup done, images start
    stream = [r for t, r in samples if t >= gen_t0]
    n = rep["timing"]["images_total"]
    first = stream[: max(1, len(stream) // 10)]
    res = {
        "n_prompts": a.n_prompts, "per_prompt": 1, "images": n, "images_generated": rep["timing"]["images_generated"],
        "steps": a.steps, "batch_size": a.batch_size, "resolution": 32, "judge": "toy", "fd": "clip",
        "wall_seconds": wall, "generate_judge_seconds": rep["timing"]["generate_seconds"],
        "images_per_second": n / rep["timing"]["generate_seconds"],
        "images_per_second_end_to_end": n / wall,
        "peak_rss_mb": peak, "rss_before_mb": rss_start,
        "rss_at_stream_start_mb": stream[0] if stream else None,
        "rss_max_first_10pct_mb": max(first) if first else None,
        "rss_max_stream_mb": max(stream) if stream else None,
        "rss_growth_during_stream_mb": (max(stream) - max(first)) if stream else None,
        "results": rep["results"][csv.stem]["base"] | {"judges": None},
        "load_average_start_end": [load_start, os.getloadavg()[0]],
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0], "torch": torch.__version__},
    }
    res["results"].pop("judges")
    rd = Path(a.results)
    rd.mkdir(parents=True, exist_ok=True)
    atomic.write_json(rd / "streaming.json", res)
    md = [f"# Streaming evaluation: {n} images of {a.n_prompts} prompts on the toy model",
          "", "`python eval/streaming.py` (toy judge, FD-CLIP, CLIP score; images cached as PNG, judged and featurised "
          "batch by batch; nothing holds all images).", "",
          "| figure | value |", "|---|---|",
          f"| images | {n} ({a.steps} steps, batch {a.batch_size}, 32 px) |",
          f"| generation + judging + features | {res['generate_judge_seconds']:.1f} s = **{res['images_per_second']:.2f} images/s** |",
          f"| end to end (model loads, report) | {wall:.1f} s = {res['images_per_second_end_to_end']:.2f} images/s |",
          f"| peak RSS | **{peak:.0f} MB** |",
          f"| RSS when the stream starts | {res['rss_at_stream_start_mb']:.0f} MB |",
          f"| RSS growth from the first 10% of the stream to its end | {res['rss_growth_during_stream_mb']:.1f} MB |",
          f"| machine | {res['machine']['cpus']} CPUs, torch {res['machine']['torch']}, {res['machine']['torch_threads']} threads |",
          f"| load average at start / end | {load_start:.1f} / {res['load_average_start_end'][1]:.1f} (the CPUs were shared "
          "with other jobs: images/s is a lower bound) |",
          "", "Memory is flat over the stream: what grows with the number of images is only the per-image records "
          "(a label, a CLIP score, one feature row: ~1 KB per image with toy-CLIP, 8 KB with Inception), not the images "
          "(an SD image at 512 px is 768 KB; holding the 4,703 I2P images would take 3.6 GB).", ""]
    atomic.write_text(rd / "streaming.md", "\n".join(md))
    print("\n".join(md))
    if not a.out:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _cli_error(args: list[str]) -> str:
    """The one-line stderr of a refused semu-eval run."""
    import subprocess

    r = subprocess.run([sys.executable, "-m", "semu_diffusion.evaluation", *args], capture_output=True, text=True,
                       env=dict(os.environ, SEMU_EVAL_PROGRESS="0"))
    return f"exit {r.returncode}: {r.stderr.strip()}"


def _random_judges(out: Path, set_name: str, csv: str, per_prompt: int, size: int) -> dict:
    """clip and imagenet judge code on randomly initialised models, over the cached base images of a run."""
    import numpy as np
    from PIL import Image

    from semu_diffusion.evaluation import build_judge, expand, load_prompt_set

    ps = load_prompt_set(csv)
    ps.name = set_name
    items = expand(ps, per_prompt, size=(size, size))
    key = __import__("json").loads((out / "images" / "base" / set_name / "key.json").read_text())
    ims = np.stack([np.asarray(Image.open(out / "images" / "base" / set_name / f"{it.index:05d}_{it.seed}.png").convert("RGB"))
                    for it in items])
    res = {}
    for spec in ("imagenet:resnet50", "clip:ViT-B-32"):
        j = build_judge(spec, random_init=True)
        try:
            j.setup([ps], None)
        except ValueError as e:
            res[spec + " (random init)"] = {"skipped": str(e)}
            continue
        recs = j.judge(ims, items, ps)
        s = j.summarize(recs, items, ps, None)
        res[spec + " (random init)"] = {k: s[k] for k in ("accuracy", "n_images", "top_predictions") if k in s}
    res["_key_steps"] = key["steps"]
    return res


def judges_demo(a) -> dict:
    import tempfile as tf

    import torch

    from semu_diffusion.cli import _quiet_libraries
    from semu_diffusion.evaluation import EvalConfig, run_eval

    _quiet_libraries()
    os.environ.setdefault("SEMU_EVAL_PROGRESS", "0")
    tmp = Path(tf.mkdtemp(prefix="semu-judges-"))
    res: dict = {"toy": {}, "sd15_random_64px": {}}
    # toy model: toy judge + nudenet, base (and a delta if given)
    t = time.time()
    rep = run_eval(EvalConfig(prompt_sets=["toy_classes"], per_prompt=4, out=str(tmp / "toy"), judges=["toy", "nudenet"],
                              deltas=[a.delta] if a.delta else [], forget_label="triangle" if a.delta else None),
                   log=lambda *x: None)
    res["toy"]["run"] = {v: {"toy": {k: r["judges"]["toy"].get(k) for k in ("accuracy", "detection_rate", "UA", "RA")},
                             "nudenet": {k: r["judges"]["nudenet"].get(k) for k in ("counts", "total", "share_with_exposed",
                                                                                     "ratio_to_base")}}
                         for v, r in rep["results"]["toy_classes"].items()}
    res["toy"]["seconds"] = time.time() - t
    res["toy"]["images"] = rep["timing"]["images_total"]
    for spec in ("clip:ViT-B-32:openai", "imagenet:resnet50"):
        res["toy"][f"{spec} (offline, no weights)"] = _cli_error(["--judge", spec, "--per-prompt", "1", "--out",
                                                                  str(tmp / "refused")])
    res["toy"]["refused_run_left_output"] = (tmp / "refused").exists()
    res["toy"]["random_init"] = _random_judges(tmp / "toy", "toy_classes", "toy_classes", 4, 32)
    # random-weight SD-1.5 (real architecture) at 64 px: NudeNet on its images, judge code on random models
    from semu_diffusion.fullsize import save_random_pipeline

    t = time.time()
    sd = save_random_pipeline("sd15", tmp / "sd15", dtype=torch.float16)
    esd = str(ROOT / "prompts" / "examples" / "esd_classwise_sample.csv")
    rep = run_eval(EvalConfig(model=str(sd), prompt_sets=[esd], per_prompt=1, steps=4, resolution=64, batch_size=13,
                              out=str(tmp / "sd"), judges=["nudenet"], fd="none"), log=lambda *x: None)
    r = rep["results"]["esd_classwise_sample"]["base"]["judges"]["nudenet"]
    res["sd15_random_64px"]["nudenet"] = {k: r[k] for k in ("counts", "total", "share_with_exposed", "n_images")}
    res["sd15_random_64px"]["seconds"] = time.time() - t
    res["sd15_random_64px"]["steps"] = 4
    res["sd15_random_64px"]["random_init"] = _random_judges(tmp / "sd", "esd_classwise_sample", esd, 1, 64)
    for spec in ("clip:ViT-B-32:openai", "imagenet:resnet50"):
        res["sd15_random_64px"][f"{spec} (offline, no weights)"] = _cli_error(
            ["--model", str(sd), "--prompts", esd, "--judge", spec, "--per-prompt", "1", "--out", str(tmp / "refused2")])
    rd = Path(a.results)
    rd.mkdir(parents=True, exist_ok=True)
    atomic.write_json(rd / "streaming.judges.json", res)
    md = ["# One evaluation per judge: toy model and random-weight SD-1.5 at 64 px", "",
          "`python eval/streaming.py --judges-demo" + (" --delta ..." if a.delta else "") + "` (2-CPU machine, offline).", ""]
    md += ["## Toy model (toy_classes, 4 images per prompt, 25 steps)", "", "| variant | toy judge | NudeNet (score >= 0.6) |",
           "|---|---|---|"]
    for v, r in res["toy"]["run"].items():
        tj = ", ".join(f"{k} {x:.3f}" for k, x in r["toy"].items() if x is not None)
        nj = f"exposed {r['nudenet']['total']}, share {r['nudenet']['share_with_exposed']:.3f}" + (
            f", ratio {r['nudenet']['ratio_to_base']}" if r["nudenet"].get("ratio_to_base") is not None else "")
        md.append(f"| {v} | {tj} | {nj} |")
    md += ["", "## Random-weight SD-1.5 at 64 px (13 ESD-format Imagenette prompts, 1 image each, 4 steps)", "",
           f"NudeNet: {res['sd15_random_64px']['nudenet']['total']} exposed detections in "
           f"{res['sd15_random_64px']['nudenet']['n_images']} images (share "
           f"{res['sd15_random_64px']['nudenet']['share_with_exposed']:.3f}); "
           f"{res['sd15_random_64px']['seconds']:.0f} s including building and saving the pipeline.", ""]
    md += ["## clip / imagenet judges", "", "No CLIP or torchvision weights can be downloaded here. The judges refuse "
           "with one line and write nothing:", ""]
    for where in ("toy", "sd15_random_64px"):
        for k, v in res[where].items():
            if "offline" in k:
                md.append(f"- {where}, `--judge {k.split(' ')[0]}`: `{v}`")
    md += ["", "The same judge code on randomly initialised models (torchvision `weights=None`, open_clip "
           "`pretrained=None`), accuracy at chance level as expected:", ""]
    for where in ("toy", "sd15_random_64px"):
        for k, v in res[where]["random_init"].items():
            if not k.startswith("_"):
                md.append(f"- {where}, {k}: {json.dumps(v, default=float)[:300]}")
    atomic.write_text(rd / "streaming.judges.md", "\n".join(md) + "\n")
    print("\n".join(md))
    shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
