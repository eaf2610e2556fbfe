"""The sketched retain subspace against the exact one on the toy world (issue 24): per layer, the retain input
energy the Nystrom sketch's leading directions capture against the exact eigenvectors' at the same k, and the
class-wise UA / RA of SEMU erasures with the sketch forced on every layer (--retain-estimator sketch) against the
exact moments (--retain-estimator exact).

    python eval/retain_sketch.py                         # energy + 3 classes -> eval/results/retain-sketch.{json,md}
    python eval/retain_sketch.py --energy-only           # the per-layer energy comparison alone (~1 min)

Re-runnable as is when the toy model changes: the result names the toy weights it ran on (sha256 of the UNet file).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from semu_diffusion import atomic  # noqa: E402
sys.path.insert(0, str(ROOT / "eval"))
from _common import toy_weights_id  # noqa: E402


def energy_comparison(run, sketch: int, energy: float, passes: int = 2) -> dict:
    """The exact moments and the sketch (in ``passes`` passes) over the same retain inputs; per layer the true
    captured energy (against the exact moment) of the exact and the sketched top-k directions,
    k = min(exact k, sketch size)."""
    import torch

    from types import SimpleNamespace

    from semu_diffusion.svd import InputMoment, nystrom_eig
    from semu_diffusion.trainer import retain_input_pass, sketch_passes

    args = (run.unet, run.retain_latents, run.acp, run.retain_cond, run.cond["uncond"])
    kw = dict(cfg=run.tcfg, device=run.device, autocast=run.accelerator.autocast, progress=False)
    exact = retain_input_pass(*args, run.names, make_acc=lambda n, d: InputMoment(d, "exact"), **kw)
    sk = retain_input_pass(*args, run.names, make_acc=lambda n, d: InputMoment(d, "sketch", sketch, seed=run.tcfg.seed),
                           **kw)
    sk = sketch_passes(sk, passes, *args, **kw)
    acc = {n: SimpleNamespace(e=exact[n], s=sk[n]) for n in run.names}
    layers = {}
    for n, a in acc.items():
        K, tot = a.e.K.double(), float(a.e.total)
        lam, Q = torch.linalg.eigh(K)
        lam, Q = lam.flip(0).clamp_min(0), Q.flip(1)
        be, bs = a.e.basis(energy), a.s.basis(energy)
        _, U = nystrom_eig(a.s.Y, a.s.omega)
        k = min(be.k, U.shape[1])
        ex_k = float(lam[:k].sum()) / tot
        V = U[:, :k]
        sk_k = float(torch.trace(V.T @ K @ V)) / tot
        true_s = float(torch.trace(bs.V.double().T @ K @ bs.V.double())) / tot
        layers[n] = {"d": a.e.d, "k_exact": be.k, "energy_exact": be.energy, "k_compared": k,
                     "exact_at_k": ex_k, "sketch_at_k": sk_k, "ratio_at_k": sk_k / ex_k if ex_k > 0 else 1.0,
                     "sketch_k": bs.k, "sketch_reported": bs.energy, "sketch_true": true_s,
                     "sketched_below_d": a.s.l < a.e.d}
    r = [v["ratio_at_k"] for v in layers.values()]
    below = [v["ratio_at_k"] for v in layers.values() if v["sketched_below_d"]]
    return {"sketch": sketch, "passes": passes, "energy_target": energy, "layers": layers, "ratio_min": min(r),
            "ratio_mean": sum(r) / len(r), "ratio_min_where_sketch_smaller_than_d": min(below) if below else None,
            "lower_bound_holds": all(v["sketch_reported"] <= v["sketch_true"] + 1e-6 for v in layers.values()),
            "layers_k_exact_above_sketch": sum(v["k_exact"] > sketch for v in layers.values())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="triangle,star,heart", help="comma-separated toy classes")
    p.add_argument("--per-prompt", type=int, default=10)
    p.add_argument("--sketch", type=int, default=512, help="sketch size l (--retain-sketch)")
    p.add_argument("--passes", type=int, default=2, choices=[1, 2], help="sketch passes (--retain-sketch-passes)")
    p.add_argument("--energy-only", action="store_true")
    p.add_argument("--out-dir", default=str(ROOT / "eval" / "results"))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "retain-sketch"))
    p.add_argument("--name", default="retain-sketch")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from semu_diffusion import api
    from semu_diffusion.api import erase
    from semu_diffusion.config import config_from_kwargs
    from semu_diffusion.evaluation import EvalConfig, run_eval
    from semu_diffusion.loading import load_pipeline

    out, work = Path(a.out_dir), Path(a.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    (work / "deltas").mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("toy")
    classes = [c for c in a.classes.split(",") if c]
    res = {"toy_weights": toy_weights_id(), "machine": platform.platform(), "per_prompt": a.per_prompt,
           "sketch": a.sketch, "passes": a.passes, "classes": classes}
    t0 = time.time()
    run = api.prepare(config_from_kwargs(concept=classes[0], seed=a.seed), pipe=pipe, progress=False, log=lambda *x: None)
    api.make_forget_set(run)
    res["energy"] = energy_comparison(run, a.sketch, run.cfg.retain_energy, a.passes)
    res["energy"]["seconds"] = time.time() - t0
    del run
    res["runs"] = {}
    path = out / f"{a.name}.json"
    if not a.energy_only:
        for c in classes:
            for est in ("exact", "sketch"):
                delta = work / "deltas" / f"{c}-{est}.safetensors"
                t1 = time.time()
                r = erase(c, pipe=pipe, out=str(delta), seed=a.seed, progress=False, log=lambda *x: None,
                          retain_estimator=est, retain_sketch=a.sketch, retain_sketch_passes=a.passes)
                es = time.time() - t1
                rep = run_eval(EvalConfig(model="toy", deltas=[str(delta)], prompt_sets=["toy_classes"],
                                          per_prompt=a.per_prompt, out=str(work / "eval"), forget_label=c,
                                          seed=a.seed, fd="none"), log=lambda *x: None)
                cl = rep["results"]["toy_classes"]
                rs = r.provenance["method_info"]["retain_subspace"]
                res["runs"][f"{c}/{est}"] = {"UA": cl[delta.stem]["UA"], "RA": cl[delta.stem]["RA"],
                                             "base_UA": cl["base"]["UA"], "base_RA": cl["base"]["RA"],
                                             "erase_seconds": es, "energy_reached_min": rs.get("energy_reached_min"),
                                             "energy_reached_mean": rs.get("energy_reached_mean"),
                                             "sketched_layers": rs.get("sketched_layers")}
                atomic.write_json(path, res)
        res["diff"] = {c: {"UA": res["runs"][f"{c}/sketch"]["UA"] - res["runs"][f"{c}/exact"]["UA"],
                           "RA": res["runs"][f"{c}/sketch"]["RA"] - res["runs"][f"{c}/exact"]["RA"]} for c in classes}
    atomic.write_json(path, res)
    md = table(res)
    atomic.write_text(out / f"{a.name}.md", md)
    print(md)


def table(res: dict) -> str:
    e = res["energy"]
    lines = [f"# Sketched vs exact retain subspace (toy world, sketch l = {res['sketch']}, "
             f"{e.get('passes', 1)} pass(es))", "",
             f"Toy weights (sha256 of the pipeline's weight files, 16 hex): {res['toy_weights']}", "",
             f"Retain input energy captured by the sketch's top-k directions / the exact top-k's, k = min(exact k at "
             f"{e['energy_target']}, l), over {len(e['layers'])} target layers: min **{e['ratio_min']:.5f}**, mean "
             f"{e['ratio_mean']:.5f}; layers whose d exceeds l: min {e['ratio_min_where_sketch_smaller_than_d']}. "
             f"Layers where the exact k exceeds l: {e['layers_k_exact_above_sketch']}. The energy the sketch reports "
             f"is a lower bound of what it captures on every layer: {e['lower_bound_holds']}.", "",
             "| layer | d | k exact | energy exact | k compared | exact@k | sketch@k | ratio | sketch reported | sketch true |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n, v in e["layers"].items():
        if v["d"] > 512 or v is next(iter(e["layers"].values())):
            lines.append(f"| {n} | {v['d']} | {v['k_exact']} | {v['energy_exact']:.5f} | {v['k_compared']} | "
                         f"{v['exact_at_k']:.5f} | {v['sketch_at_k']:.5f} | {v['ratio_at_k']:.5f} | "
                         f"{v['sketch_reported']:.5f} | {v['sketch_true']:.5f} |")
    lines.append("\n(layers with d <= 512 not listed: there the sketch spans every input direction and equals exact.)")
    if res.get("runs"):
        lines += ["", f"Class-wise erasure, SEMU toy defaults, {res['per_prompt']} images per prompt (toy-CLIP):", "",
                  "| class | UA exact | UA sketch | RA exact | RA sketch | ΔUA | ΔRA | min energy reached exact / sketch |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in res["classes"]:
            x, s = res["runs"].get(f"{c}/exact"), res["runs"].get(f"{c}/sketch")
            if x and s:
                lines.append(f"| {c} | {x['UA']:.3f} | {s['UA']:.3f} | {x['RA']:.3f} | {s['RA']:.3f} | "
                             f"{s['UA'] - x['UA']:+.3f} | {s['RA'] - x['RA']:+.3f} | "
                             f"{x['energy_reached_min']:.4f} / {s['energy_reached_min']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
