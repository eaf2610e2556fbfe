"""Fuzz targets (hypothesis) for the two readers of untrusted files: the delta reader and the prompt-set reader.

A few dozen examples each in the default run; ``python eval/fuzz.py`` runs >= 100k generated inputs. Every input
is either accepted or refused with the reader's own one-line error; any other exception fails the test.
"""
from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
import fuzz  # noqa: E402  (eval/fuzz.py: the generators and targets)

from semu_diffusion.delta import PROVENANCE_KEY  # noqa: E402
from semu_diffusion.validate import PROVENANCE_SCHEMA  # noqa: E402

FEW = settings(max_examples=30, deadline=None, database=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    unet = fuzz.tiny_unet()
    good = fuzz.good_delta_bytes(d, unet)
    assert fuzz.delta_target(d / "good.safetensors", unet) == "accepted"
    return d, unet, good


@FEW
@given(data=st.binary(max_size=600), prefix_len=st.booleans())
def test_delta_reader_random_bytes(world, data, prefix_len):
    d, unet, _ = world
    if prefix_len:
        data = len(data).to_bytes(8, "little") + data
    p = d / "rand.safetensors"
    p.write_bytes(data)
    assert fuzz.delta_target(p, unet) == "refused"


@FEW
@given(field=st.sampled_from(sorted(PROVENANCE_SCHEMA) + ["unknown_field"]), value=json_values)
def test_delta_reader_provenance_fields(world, field, value):
    d, unet, good = world
    header, body = fuzz.split(good)
    prov = json.loads(header["__metadata__"][PROVENANCE_KEY])
    prov[field] = value
    header["__metadata__"][PROVENANCE_KEY] = json.dumps(prov)
    p = d / "prov.safetensors"
    p.write_bytes(fuzz.join(header, body))
    assert fuzz.delta_target(p, unet) in ("accepted", "refused")


@FEW
@given(seed=st.integers(0, 2**32 - 1), gen=st.sampled_from(sorted(fuzz.DELTA_GENERATORS)))
def test_delta_reader_mutations(world, seed, gen):
    d, unet, good = world
    p = d / "mut.safetensors"
    p.write_bytes(fuzz.DELTA_GENERATORS[gen](random.Random(seed), good))
    assert fuzz.delta_target(p, unet) in ("accepted", "refused")


@pytest.fixture(scope="module")
def reader():
    return fuzz.prompt_reader()


@FEW
@given(text=st.text(max_size=300), suffix=st.sampled_from([".txt", ".csv"]), bom=st.booleans(),
       max_prompts=st.none() | st.integers(0, 3))
def test_prompt_reader_text(tmp_path_factory, reader, text, suffix, bom, max_prompts):
    p = tmp_path_factory.mktemp("pt") / f"set{suffix}"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass"))
    assert fuzz.prompt_target(p, None, max_prompts, reader) in ("accepted", "refused")


@FEW
@given(cols=st.lists(st.sampled_from(fuzz.PROMPT_COLS), min_size=1, max_size=5, unique=True),
       rows=st.lists(st.lists(st.text(max_size=12) | st.sampled_from(["nan", "inf", "1e400", "-1", "512", "7.5"]),
                              min_size=0, max_size=6), max_size=5),
       filters=st.none() | st.lists(st.sampled_from(["categories=sexual", "label=a", "noequals", "=x"]), max_size=2))
def test_prompt_reader_csv(tmp_path_factory, reader, cols, rows, filters):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow(r)
    p = tmp_path_factory.mktemp("pc") / "set.csv"
    p.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass"))
    assert fuzz.prompt_target(p, filters, None, reader) in ("accepted", "refused")


def test_fuzz_runner_small():
    """The benchmark runner itself, on a few hundred generated inputs: no tracebacks, no hangs."""
    res = fuzz.run(300, seed=123, timeout=10.0, log=None)
    assert res["totals"]["cases"] == 300
    assert res["totals"]["tracebacks"] == 0, res["failures"][:1]
    assert res["totals"]["hangs"] == 0
