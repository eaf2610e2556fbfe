"""Joint erasure under ``accelerate launch`` with 2 processes (CPU, gloo) writes the delta of one process.

Same command, same seed, same total batch: the 2-process run splits every micro-batch between the processes and
accelerate sums their gradients. Its generated latents, per-concept forget gradients and SVD subspaces are bitwise
those of one process (whole generation batches and whole concepts are shared out). The weight update is not bitwise
the same: each process runs the UNet on half of every batch (CPU kernels round differently for another batch size)
and the loss and gradient are sums of the two halves' parts instead of one mean (another reduction order); Adam then
carries these float32 rounding differences (~1e-7 relative) through the steps. Measured: max |dW_2 - dW_1| about
2e-5 of max |dW_1|; the test allows 1e-3 of it (2e-3 of the first loss), far below what a wrong split or a missing
all-reduce gives (tens of per cent).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ARGS = ["--concept", "triangle", "--concept", "star", "--steps", "4", "--forget-n", "4", "--gen-steps", "2",
        "--batch-size", "4", "--quiet", "--json"]
REL_TOL = 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _erase_cmd() -> list[str]:
    script = Path(sys.executable).with_name("semu-erase")  # the console script users launch
    if script.is_file():
        return [str(script)]
    return ["-c", "from semu_diffusion.cli import erase_main; erase_main()"]


def dense_updates(path) -> dict[str, torch.Tensor]:
    """Every layer's weight update B @ A (float64): independent of the sign and order of the subspace's axes."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    out = {}
    for k, a in t.items():
        if k.endswith(".lora_A.weight"):
            b = t[k.replace(".lora_A.", ".lora_B.")]
            out[k[: -len(".lora_A.weight")]] = b.double().reshape(len(b), -1) @ a.double().reshape(len(a), -1)
    return out


def test_two_processes_write_the_one_process_delta(tmp_path, toy_available):
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    erase = _erase_cmd()
    one_cmd = ([str(Path(sys.executable))] if erase[0] == "-c" else []) + erase
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    if erase[0] == "-c":  # accelerate launch runs a script file
        s = tmp_path / "semu_erase.py"
        s.write_text("from semu_diffusion.cli import erase_main\nerase_main()\n")
        erase = [str(s)]
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    t0 = time.time()
    runs = {name: subprocess.Popen(cmd + ARGS + ["--out", str(out)], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
            for name, cmd, out in (("one", one_cmd, one), ("two", launch + erase, two))}
    res = {}
    for name, p in runs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"{name}: {err[-3000:]}"
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        assert len(lines) == 1, f"{name}: one JSON line expected (only the main process prints), got {len(lines)}"
        res[name] = json.loads(lines[0])
    print(f"1 and 2 processes side by side: {time.time() - t0:.1f} s")
    assert not list(tmp_path.glob(".two.safetensors.*")), "a temporary file was left beside the delta"
    a, b = dense_updates(one), dense_updates(two)
    assert a.keys() == b.keys() and len(a) > 10
    scale = max(float(v.abs().max()) for v in a.values())
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |dW_2 - dW_1| = {diff:.3e} (max |dW_1| = {scale:.3e}, relative {diff / scale:.2e})")
    assert 0 < scale and diff <= REL_TOL * scale, f"2-process update differs by {diff:.3e} (max |dW| {scale:.3e})"
    s1, s2 = res["one"], res["two"]
    assert s1["rank_mean"] == s2["rank_mean"] and s1["trainable_params"] == s2["trainable_params"]
    assert abs(s1["first_loss"] - s2["first_loss"]) <= 2e-3 * s1["first_loss"]  # the summed loss is the whole batch's
    assert abs(s1["final_loss"] - s2["final_loss"]) <= 2e-3 * s1["final_loss"]
