"""One atomic-write helper for every result file: an interrupted write leaves the old file and no temporary."""
import json

import numpy as np
import pytest

from semu_diffusion import atomic


def test_write_json_and_text_replace_the_file(tmp_path):
    p = tmp_path / "r.json"
    atomic.write_json(p, {"a": np.float32(1.5)})
    assert json.loads(p.read_text()) == {"a": 1.5}
    atomic.write_text(tmp_path / "r.md", "x")
    assert (tmp_path / "r.md").read_text() == "x" and sorted(f.name for f in tmp_path.iterdir()) == ["r.json", "r.md"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "img.png"
    p.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(p) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert p.read_bytes() == b"old" and [f.name for f in tmp_path.iterdir()] == ["img.png"]
    with atomic.atomic_path(tmp_path / "d.safetensors", keep_suffix=False) as tmp:
        assert tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
    assert (tmp_path / "d.safetensors").read_bytes() == b"new"
