"""Fuzz the two readers of untrusted files: the delta reader (semu_diffusion.validate.validate_delta) and the
prompt-set reader (load_prompt_set). Every generated input must either be accepted or refused with the reader's own
one-line error (DeltaError / PromptSetError); anything else is a traceback, and a case running past --timeout is a
hang. Prints and writes eval/results/fuzz.{json,md}: cases, accepted, refused, tracebacks, hangs, per generator.

    python eval/fuzz.py --cases 100000            # about 60 % deltas, 40 % prompt files
    python eval/fuzz.py --cases 2000 --no-write   # a quick look

Inputs come from seeded generators (random bytes, bit flips and truncations of a valid delta, mutated safetensors
headers and provenance fields with type-confused JSON, special float values in tensors; random text/CSV prompt files
in every supported column layout with odd cells, BOMs, bad encodings and filters). tests/test_fuzz.py runs the same
targets with hypothesis for a few examples in the default test run.
"""
from __future__ import annotations

import argparse
import base64
import importlib
import json
import math
import os
import platform
import random
import signal
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from semu_diffusion import atomic  # noqa: E402
from semu_diffusion.delta import DeltaError, fingerprint, save_delta  # noqa: E402
from semu_diffusion.methods.base import Delta  # noqa: E402
from semu_diffusion.validate import validate_delta  # noqa: E402


# ------------------------------------------------------------------------------------------------ the targets
def tiny_unet() -> nn.Module:
    """A small module tree with a linear and a conv target (stands in for a UNet in the validator)."""
    torch.manual_seed(0)
    m = nn.Module()
    m.down = nn.Module()
    m.down.lin = nn.Linear(8, 6)
    m.down.conv = nn.Conv2d(4, 6, 3)
    m.up = nn.Conv2d(6, 4, 1)
    return m


def good_delta_bytes(folder: Path, unet: nn.Module) -> bytes:
    g = torch.Generator().manual_seed(1)
    d = Delta(format="mixed")
    d.lora["down.lin"] = (torch.randn(6, 2, generator=g) * 0.1, torch.randn(2, 8, generator=g) * 0.1)
    d.lora["down.conv"] = (torch.randn(6, 3, 1, 1, generator=g) * 0.1, torch.randn(3, 4, 3, 3, generator=g) * 0.1)
    d.ranks = {"down.lin": 2, "down.conv": 3}
    d.dense["up"] = torch.randn(4, 6, 1, 1, generator=g) * 0.01
    p = save_delta(folder / "good.safetensors", d, {"method": "semu", "base_model": "tiny", "concepts": ["star"],
                                                   "ranks": dict(d.ranks), "seed": 0, "tau": 0.95,
                                                   "base_fingerprint": fingerprint(unet, d.modules())})
    return p.read_bytes()


def delta_target(path: Path, unet: nn.Module) -> str:
    """-> "accepted" | "refused"; any other exception escapes."""
    out = "accepted"
    for kw in ({}, {"pipe": unet, "allow_unverified": True}):
        try:
            validate_delta(path, **kw)
        except DeltaError as e:
            msg = str(e)
            if "\n" in msg or not msg:
                raise AssertionError(f"DeltaError message is not one line: {msg[:200]!r}") from None
            out = "refused"
    return out


def prompt_reader():
    """load_prompt_set and its error types, wherever the evaluation package keeps them."""
    for mod in ("semu_diffusion.evaluation.prompts", "semu_diffusion.evaluation", "semu_diffusion.evaluate"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if hasattr(m, "load_prompt_set"):
            errs = tuple({getattr(m, n) for n in ("PromptSetError", "EvalOptionError") if hasattr(m, n)}) or (ValueError,)
            try:
                from semu_diffusion.evaluation.options import EvalOptionError

                errs = tuple(set(errs) | {EvalOptionError})
            except ImportError:
                pass
            return m.load_prompt_set, errs
    raise ImportError("no prompt-set reader found in semu_diffusion.evaluation(.prompts) or semu_diffusion.evaluate")


def prompt_target(path: Path, filters: list[str] | None, max_prompts: int | None, reader) -> str:
    load, errs = reader
    try:
        ps = load(str(path), filters=filters, max_prompts=max_prompts)
    except errs as e:
        msg = str(e)
        if "\n" in msg or not msg:
            raise AssertionError(f"prompt-set error is not one line: {msg[:200]!r}") from None
        return "refused"
    assert ps.rows and all(isinstance(r.prompt, str) and r.prompt for r in ps.rows)
    return "accepted"


# --------------------------------------------------------------------------------------------- generators
def rand_json(r: random.Random, depth: int = 0):
    k = r.randrange(10 if depth < 3 else 6)
    if k == 0:
        return None
    if k == 1:
        return r.random() < 0.5
    if k == 2:
        return r.choice([0, 1, -1, 2, 7, 2**31, 2**63, -(2**63), 10**30, r.randrange(-1000, 1000)])
    if k == 3:
        return r.choice([0.0, -0.0, 1.5, 1e308, -1e-320, float("nan"), float("inf"), -float("inf"), r.uniform(-1e3, 1e3)])
    if k in (4, 5):
        return r.choice(["", "1", "lora", "dense", "mixed", "F32", "I32", "float16", "bfloat16", "x" * r.randrange(200),
                         "/home/user/model", "\x00\n\t\"'", "☃" * 3, "unet.down.lin", "AAAA", "!!!"])
    if k in (6, 7):
        return [rand_json(r, depth + 1) for _ in range(r.randrange(4))]
    return {r.choice(["a", "r", "version", "modules", "values", "format_version", "dtype", "shape"]): rand_json(r, depth + 1)
            for _ in range(r.randrange(4))}


def split(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8: 8 + n]), blob[8 + n:]


def join(header: dict, body: bytes, r: random.Random | None = None) -> bytes:
    h = json.dumps(header).encode()
    if r is not None and r.random() < 0.05:
        h = h[: r.randrange(len(h) + 1)]
    pad = (8 - len(h) % 8) % 8
    h += b" " * pad
    return struct.pack("<Q", len(h)) + h + body


def g_random_bytes(r, good):
    n = r.choice([0, 1, 7, 8, 9, 16, 64, r.randrange(2048)])
    b = bytes(r.randrange(256) for _ in range(n))
    if n >= 8 and r.random() < 0.5:
        b = struct.pack("<Q", r.choice([0, 2, n - 8, n, 2**63, r.randrange(4096)])) + b[8:]
    return b


def g_bitflip(r, good):
    b = bytearray(good)
    n = struct.unpack("<Q", good[:8])[0]
    for _ in range(r.randrange(1, 9)):
        i = r.randrange(8 + n) if r.random() < 0.7 else r.randrange(len(b))
        b[i] ^= 1 << r.randrange(8)
    return bytes(b)


def g_truncate(r, good):
    return good[: r.randrange(len(good))]


def g_header(r, good):
    header, body = split(good)
    keys = [k for k in header if k != "__metadata__"]
    for _ in range(r.randrange(1, 4)):
        k = r.choice(keys)
        op = r.randrange(8)
        e = header.get(k)
        if not isinstance(e, dict):
            continue
        if op == 0:
            header.pop(k, None)
        elif op == 1:
            e["dtype"] = r.choice(["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "X", 3, None])
        elif op == 2:
            e["shape"] = r.choice([[], [0], [-1], [2**40], [1, 2, 3, 4, 5], "4", [1.5], [r.randrange(12) for _ in range(r.randrange(5))]])
        elif op == 3:
            e["data_offsets"] = r.choice([[0, 0], [-4, 0], [10, 5], [0, len(body) + 4], "x", [0], [r.randrange(len(body) + 1), r.randrange(len(body) + 1)]])
        elif op == 4:
            header["unet." + rand_name(r)] = dict(e)
        elif op == 5:
            header[k] = rand_json(r)
        elif op == 6:
            header[r.choice(["lora_unet_x.alpha", "unet.down.lin.lora_A.weight", "text_encoder.x", "unet..delta_weight"])] = e
        else:
            header["__metadata__"] = rand_json(r) if r.random() < 0.5 else {"format": "pt"}
    return join(header, body, r)


def rand_name(r):
    return r.choice(["down.lin", "down.conv", "up", "nope", "down", "a b", "x\ny", "down.lin.weight", "上"]) + r.choice(
        [".lora_A.weight", ".lora_B.weight", ".delta_weight", ".alpha", ""])


def g_provenance(r, good):
    header, body = split(good)
    meta = header["__metadata__"]
    which = r.choice(["semu_provenance", "semu_provenance", "lora_adapter_metadata"])
    try:
        doc = json.loads(meta[which])
    except (KeyError, ValueError):
        doc = {}
    op = r.randrange(6)
    if op == 0 and isinstance(doc, dict) and doc:
        doc[r.choice(list(doc))] = rand_json(r)
    elif op == 1 and isinstance(doc, dict):
        sig = doc.get("base_signature")
        if isinstance(sig, dict):
            f = r.choice(["version", "modules", "values"])
            if f == "modules" and isinstance(sig.get("modules"), list) and sig["modules"] and r.random() < 0.7:
                row = list(sig["modules"][r.randrange(len(sig["modules"]))])
                row[r.randrange(4)] = rand_json(r)
                sig["modules"][0] = row
            elif f == "values" and r.random() < 0.7:
                raw = bytearray(base64.b64decode(sig["values"]))
                if raw:
                    raw[r.randrange(len(raw))] ^= 1 << r.randrange(8)
                sig["values"] = base64.b64encode(bytes(raw)).decode()
            else:
                sig[f] = rand_json(r)
    elif op == 2 and isinstance(doc, dict) and doc:
        doc.pop(r.choice(list(doc)))
    elif op == 3:
        doc = rand_json(r)
    elif op == 4 and isinstance(doc, dict):
        doc[r.choice(["format_version", "delta_format", "ranks", "unet.r", "unet.lora_alpha", "unet.rank_pattern",
                      "unet.alpha_pattern", "unet.use_rslora"])] = rand_json(r)
    text = json.dumps(doc)
    if op == 5:
        text = text[: r.randrange(len(text) + 1)]
    meta = dict(meta)
    meta[which] = text
    header["__metadata__"] = meta
    return join(header, body)


def g_values(r, good):
    header, body = split(good)
    b = bytearray(body)
    k = r.choice([k for k in header if k != "__metadata__"])
    e = header[k]
    lo, hi = e["data_offsets"]
    size = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}.get(e["dtype"], 4)
    if hi - lo >= size:
        i = lo + size * r.randrange((hi - lo) // size)
        v = r.choice([float("nan"), float("inf"), -float("inf"), 1e30, -1e5, 1e-45, 0.0, 65504.0])
        if size == 4:
            b[i: i + 4] = struct.pack("<f", v)
        elif size == 8:
            b[i: i + 8] = struct.pack("<d", v)
        else:
            b[i: i + 2] = struct.pack("<e", v if abs(v) < 65504 or not math.isfinite(v) else 65504.0)
    return join(header, bytes(b))


def g_structured(r, good):
    header = {}
    body = bytearray()
    for _ in range(r.randrange(5)):
        dt = r.choice(["F32", "F16", "BF16", "F64", "I32"])
        shape = [r.randrange(1, 7) for _ in range(r.choice([1, 2, 2, 4, 3]))]
        n = math.prod(shape) * {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4}[dt]
        header["unet." + rand_name(r)] = {"dtype": dt, "shape": shape, "data_offsets": [len(body), len(body) + n]}
        body += bytes(r.randrange(256) for _ in range(n))
    meta = {"format": "pt"}
    if r.random() < 0.8:
        meta["semu_provenance"] = json.dumps(rand_json(r) if r.random() < 0.3 else
                                             {"format_version": 1, "delta_format": r.choice(["lora", "dense", "mixed"]),
                                              "base_fingerprint": r.choice([None, "abc"])})
    if r.random() < 0.5:
        meta["lora_adapter_metadata"] = json.dumps({"unet.r": r.randrange(1, 4), "unet.lora_alpha": r.randrange(1, 4)})
    header["__metadata__"] = meta
    return join(header, bytes(body))


DELTA_GENERATORS = {"random_bytes": g_random_bytes, "bitflip": g_bitflip, "truncate": g_truncate, "header": g_header,
                    "provenance": g_provenance, "values": g_values, "structured": g_structured}

PROMPT_COLS = ["prompt", "label", "class", "seed", "evaluation_seed", "sd_seed", "guidance_scale", "evaluation_guidance",
               "sd_guidance_scale", "width", "height", "sd_image_width", "sd_image_height", "case_number", "categories",
               "nudity_percentage", "inappropriate_percentage", "junk", "Prompt", " prompt "]


def rand_cell(r):
    return r.choice(["", "0", "1", "-1", "7.5", "nan", "inf", "-inf", "1e400", "1e-400", "0x10", "512", "513", "8", "4096",
                     "4104", "99999999999999999999999", "-0", "1.0", "a photo of a star", "sexual", "sexual,violence",
                     "\"quoted, cell\"", "multi\nline", "\x00", "☃ emoji 🎨", " ", "=1+1", "x" * r.randrange(300),
                     str(r.randrange(-10**6, 10**6)), str(r.uniform(-1e3, 1e3))])


def g_txt(r):
    lines = []
    for _ in range(r.randrange(8)):
        lines.append(r.choice(["a photo of a star", "# comment", "", "   ", "\ufeffbom", "\x00nul", "tab\there",
                               "x" * r.randrange(5000), "\r", "日本語のプロンプト", rand_cell(r)]))
    text = "\n".join(lines)
    enc = r.choice(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"])
    try:
        return text.encode(enc), ".txt"
    except UnicodeEncodeError:
        return text.encode("utf-8"), ".txt"


def g_csv(r):
    cols = r.sample(PROMPT_COLS, r.randrange(0, 6))
    if r.random() < 0.7 and "prompt" not in cols:
        cols.insert(r.randrange(len(cols) + 1), "prompt")
    rows = [",".join(cols)]
    for _ in range(r.randrange(6)):
        cells = [rand_cell(r) for _ in range(len(cols) + r.choice([0, 0, 0, 1, -1]))]
        rows.append(",".join(c if r.random() < 0.5 else '"' + c.replace('"', '""') + '"' for c in cells))
    text = r.choice(["\n", "\r\n"]).join(rows)
    data = text.encode("utf-8")
    if r.random() < 0.2:
        data = b"\xef\xbb\xbf" + data
    if r.random() < 0.1:
        data = data.replace(b"a", b"\xe9")
    if r.random() < 0.05:
        data = bytes(r.randrange(256) for _ in range(r.randrange(200)))
    return data, ".csv"


def rand_filters(r):
    if r.random() < 0.7:
        return None
    return [r.choice(["categories=sexual", "label=star", "class=1", "nope=1", "noequals", "=x", "prompt=", "a=b=c"])
            for _ in range(r.randrange(1, 3))]


PROMPT_GENERATORS = {"txt": g_txt, "csv": g_csv}


# -------------------------------------------------------------------------------------------------- the runner
class Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise Hang()


def run(cases: int, seed: int, timeout: float, delta_share: float = 0.6, log=print) -> dict:
    r = random.Random(seed)
    unet = tiny_unet()
    reader = prompt_reader()
    tmp = Path(tempfile.mkdtemp(prefix="semu-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    good = good_delta_bytes(tmp, unet)
    assert delta_target(tmp / "good.safetensors", unet) == "accepted", "the seed delta must be valid"
    stats: dict[str, dict] = {}
    failures: list[dict] = []
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.time()
    slowest = 0.0
    for i in range(cases):
        if r.random() < delta_share:
            gname = r.choice(list(DELTA_GENERATORS))
            data = DELTA_GENERATORS[gname](r, good)
            path = tmp / "case.safetensors"
            if r.random() < 0.03:
                path = tmp / r.choice(["case.ckpt", "case.bin", "case.st"])
            path.write_bytes(data)
            call = lambda: delta_target(path, unet)  # noqa: E731
            gname = "delta/" + gname
        else:
            gname = r.choice(list(PROMPT_GENERATORS))
            data, suffix = PROMPT_GENERATORS[gname](r)
            path = tmp / f"set{suffix}"
            path.write_bytes(data)
            flt, mp = rand_filters(r), r.choice([None, None, None, 0, 1, 3])
            call = lambda: prompt_target(path, flt, mp, reader)  # noqa: E731
            gname = "prompts/" + gname
        s = stats.setdefault(gname, {"cases": 0, "accepted": 0, "refused": 0, "tracebacks": 0, "hangs": 0})
        s["cases"] += 1
        c0 = time.time()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            s[call()] += 1
        except Hang:
            s["hangs"] += 1
            failures.append({"generator": gname, "kind": "hang", "case": i, "input_b64": base64.b64encode(data[:4096]).decode()})
        except Exception:
            s["tracebacks"] += 1
            if len(failures) < 50:
                failures.append({"generator": gname, "kind": "traceback", "case": i, "traceback": traceback.format_exc()[-3000:],
                                 "input_b64": base64.b64encode(data[:4096]).decode()})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        slowest = max(slowest, time.time() - c0)
        if log and (i + 1) % 10000 == 0:
            tb = sum(v["tracebacks"] for v in stats.values())
            log(f"{i + 1} cases, {tb} tracebacks, {time.time() - t0:.0f} s")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    tot = {k: sum(v[k] for v in stats.values()) for k in ("cases", "accepted", "refused", "tracebacks", "hangs")}
    return {"totals": tot, "per_generator": dict(sorted(stats.items())), "failures": failures, "seed": seed,
            "timeout_s": timeout, "seconds": round(time.time() - t0, 1), "slowest_case_s": round(slowest, 3),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "safetensors": importlib.import_module("safetensors").__version__}}


def write(res: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_text(folder / "fuzz.json", json.dumps(res, indent=1) + "\n")
    t = res["totals"]
    lines = ["# Fuzzing the delta reader and the prompt-set reader", "",
             f"`python eval/fuzz.py --cases {t['cases']} --seed {res['seed']}` ({res['seconds']} s, per-case timeout "
             f"{res['timeout_s']} s, slowest case {res['slowest_case_s']} s).", "",
             f"**{t['cases']} inputs: {t['accepted']} accepted, {t['refused']} refused with the reader's one-line error, "
             f"{t['tracebacks']} tracebacks, {t['hangs']} hangs.**", "",
             "| generator | cases | accepted | refused | tracebacks | hangs |", "|---|---:|---:|---:|---:|---:|"]
    for g, s in res["per_generator"].items():
        lines.append(f"| {g} | {s['cases']} | {s['accepted']} | {s['refused']} | {s['tracebacks']} | {s['hangs']} |")
    lines += ["", "Delta inputs go through `semu_diffusion.validate.validate_delta` twice (file only, and against a small "
              "module tree with a linear and two conv targets); prompt inputs through `load_prompt_set` with random "
              "`--filter`/`--max-prompts`. Accepted = a valid delta/prompt set; refused = `DeltaError` / "
              "`PromptSetError` / `EvalOptionError` with a one-line message."]
    if res["failures"]:
        lines += ["", "## Failures (first)", ""]
        for f in res["failures"][:10]:
            lines += [f"- {f['generator']} case {f['case']}: {f['kind']}", "", "```", f.get("traceback", "")[-1500:], "```"]
    atomic.write_text(folder / "fuzz.md", "\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per input before it counts as a hang")
    ap.add_argument("--out", default=str(ROOT / "eval" / "results"))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = run(a.cases, a.seed, a.timeout)
    t = res["totals"]
    print(json.dumps({"totals": t, "seconds": res["seconds"], "slowest_case_s": res["slowest_case_s"]}))
    for f in res["failures"][:5]:
        print(f"--- {f['generator']} case {f['case']} ({f['kind']})\n{f.get('traceback', '')}")
    if not a.no_write:
        write(res, Path(a.out))
    return 1 if t["tracebacks"] or t["hangs"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
