"""eval/cost.py: peak memory of whole erasures (--memory-methods, --memory-only), each in a fresh process
(--memory-child)."""
from __future__ import annotations

import gc
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from cost_common import child_command


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs), so that building the model
    does not count in the erasure's peak. Returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    """VmHWM (peak RSS since the last reset) from /proc/self/status, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) / 2**20
    except OSError:
        pass
    return rss_gb()


def erase_memory(a, methods: list[str]) -> dict:
    """Peak memory of one whole erasure per method, each in a fresh process: peak RSS from the end of the model
    build (the build's own peak is reset away) to the end of the erasure, and that peak above the RSS of the loaded
    model (the erasure's own working memory)."""
    import subprocess

    res = {}
    for m in methods:
        out = subprocess.run(child_command(a, "--memory-child", m), capture_output=True, text=True,
                             check=True).stdout
        line = [ln for ln in out.splitlines() if ln.startswith("MEMORY ")][-1]
        r = json.loads(line[len("MEMORY "):])
        r["above_base_gb"] = r["peak_rss_gb"] - r["base_rss_gb"]
        res[m] = r
        print(f"[cost] peak memory of a {m} erasure: {r['peak_rss_gb']:.2f} GB RSS ({r['above_base_gb']:.2f} GB above the loaded model)"
              + (f"; sampled peak per stage {json.dumps({k: round(v, 2) for k, v in r['stage_peak_rss_gb_sampled'].items()})}"
                 if r.get("stage_peak_rss_gb_sampled") else ""))
    return res


def memory_child(a, pipe) -> None:
    """--memory-child METHOD: one whole erasure with METHOD on the built model; prints one line "MEMORY {json}" (peak
    RSS above the loaded model, and the peak sampled every 50 ms within each erase stage) for erase_memory."""
    from semu_diffusion import erase

    gc.collect()
    base = current_rss_gb()
    reset = reset_peak_rss()
    samples: list[tuple[float, float]] = []  # (time, RSS GB) every 50 ms: which stage holds the peak
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.time(), current_rss_gb()))
            stop.wait(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory() as td:
            r = erase("a red apple" if a.arch != "toy" else "triangle", pipe=pipe, method=a.memory_child,
                      targets=a.targets, out=Path(td) / "d.safetensors", steps=a.steps, forget_n=a.forget_n,
                      mixed_precision=a.mixed_precision, device=a.device, resolution=a.resolution,
                      gen_steps=a.gen_steps, progress=False, log=lambda *x: None)
    finally:
        stop.set()
        th.join()
    # stage windows from the stage times laid end to end from the start (prepare's few ms unaccounted)
    stage_peak, start = {}, t0
    for k, v in r.stats["stage_seconds"].items():
        inside = [g for tt, g in samples if start <= tt < start + v]
        if inside:
            stage_peak[k] = max(inside)
        start += v
    print("MEMORY " + json.dumps({"method": a.memory_child, "base_rss_gb": base, "peak_rss_gb": peak_rss_gb(),
                                  "peak_reset_after_build": reset, "stage_peak_rss_gb_sampled": stage_peak,
                                  "cuda_peak_gb": r.stats.get("cuda_max_allocated_gb"), "seconds": r.stats["seconds"]}))
