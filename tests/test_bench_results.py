"""Benchmark result files are resumable, but never across toy weights: rows measured on other weights start afresh."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "eval"))
from _common import load_results, open_results, toy_weights_id  # noqa: E402


def test_results_of_other_toy_weights_are_not_reused(tmp_path):
    wid = toy_weights_id()
    assert len(wid) == 16 and wid == toy_weights_id()
    path = tmp_path / "bench.json"
    assert load_results(path, {"rows": {}}) == {"rows": {}, "toy_weights": wid}
    path.write_text(json.dumps({"rows": {"semu/star": {"ua": 1.0}}, "toy_weights": wid}))
    assert load_results(path, {"rows": {}})["rows"] == {"semu/star": {"ua": 1.0}}
    for stale in ({"rows": {"semu/star": {"ua": 1.0}}, "toy_weights": "0" * 16}, {"rows": {"semu/star": {"ua": 1.0}}}):
        path.write_text(json.dumps(stale))
        assert load_results(path, {"rows": {}}) == {"rows": {}, "toy_weights": wid}
    out, work, res_path, results = open_results(tmp_path / "out", tmp_path / "work", "bench.json")
    assert work == tmp_path / "work" / f"toy-{wid[:8]}" and (work / "deltas").is_dir()
    assert results["rows"] == {} and results["toy_weights"] == wid and res_path == tmp_path / "out" / "bench.json"
