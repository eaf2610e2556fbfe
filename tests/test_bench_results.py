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


def test_a_second_run_on_the_same_work_folder_is_refused(tmp_path):
    import subprocess

    out, work, _, _ = open_results(tmp_path / "out", tmp_path / "work", "bench.json")
    assert open_results(tmp_path / "out", tmp_path / "work", "bench.json")[1] == work  # this process may reopen it
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from _common import open_results; "
            "open_results(sys.argv[2], sys.argv[3], 'bench.json')")
    eval_dir = str(Path(__file__).resolve().parent.parent / "eval")
    other = subprocess.run([sys.executable, "-c", code, eval_dir, str(tmp_path / "out"), str(tmp_path / "work")],
                           capture_output=True, text=True)
    assert other.returncode != 0 and "in use by another benchmark run" in other.stderr
    other = subprocess.run([sys.executable, "-c", code, eval_dir, str(tmp_path / "out"), str(tmp_path / "work2")],
                           capture_output=True, text=True)
    assert other.returncode == 0, other.stderr  # another --work-dir is fine
