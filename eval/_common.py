"""What the benchmark scripts share: their results folder, the resumable results file and the machine record."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}


def open_results(out_dir, work_dir, name: str) -> tuple[Path, Path, Path, dict]:
    """Make ``out_dir`` and ``work_dir/deltas``; read ``out_dir/<name>`` (a run picks up what an earlier one measured).
    Returns (out, work, results path, results with "rows" and the "machine" record)."""
    out, work = Path(out_dir), Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    (work / "deltas").mkdir(parents=True, exist_ok=True)
    res_path = out / name
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    results.setdefault("rows", {})
    results["machine"] = machine()
    return out, work, res_path, results
