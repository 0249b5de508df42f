import json
import subprocess
import sys

import pandas as pd
import pytest

from nbutils.files import atomic_path, read_json, write_json, write_summary, write_table


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "out" / "data.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []

    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and [p.name for p in target.parent.iterdir()] == ["data.txt"]


def test_atomic_path_swaps_a_whole_folder_and_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "cache"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "b").write_text("2")
            raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_temporaries_of_killed_processes_are_swept(tmp_path):
    # A process that exits without cleaning up stands in for one killed with SIGKILL.
    code = (
        "import os, sys; from pathlib import Path; p = Path(sys.argv[1]);"
        "t = p.with_name(f'.{p.name}.tmp-{os.getpid()}-x'); t.mkdir(); (t / 'big').write_text('x'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], check=True)
    assert len(list(tmp_path.glob(".cache.tmp-*"))) == 1
    with atomic_path(tmp_path / "other") as tmp:
        tmp.write_text("x")  # without sweep_stale nothing else is touched
    assert len(list(tmp_path.glob(".cache.tmp-*"))) == 1
    with atomic_path(tmp_path / "cache", sweep_stale=True) as tmp:
        tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "other"]


def test_sweep_stale_temporaries_walks_the_tree_and_spares_live_processes(tmp_path):
    import os

    from nbutils.files import sweep_stale_temporaries, write_bytes

    code = "import os, sys; open(sys.argv[1].format(pid=os.getpid()), 'w').close(); os._exit(0)"
    (tmp_path / "a" / "b").mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a" / "b" / ".x.jpg.tmp-{pid}-abc")], check=True
    )
    live = tmp_path / "a" / f".y.jpg.tmp-{os.getpid()}-abc"  # ours: still running
    live.write_text("in progress")
    write_bytes(tmp_path / "a" / "z.jpg", b"data")
    sweep_stale_temporaries(tmp_path)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == [f"a/.y.jpg.tmp-{os.getpid()}-abc", "a/z.jpg"]


def test_write_json_keeps_chinese_readable_and_handles_numpy(tmp_path):
    import numpy as np

    path = write_json(tmp_path / "s.json", {"text": "一个红色圆形", "n": np.int64(3), "x": np.float32(0.5)})
    assert "一个红色圆形" in path.read_text(encoding="utf-8")
    assert read_json(path) == {"text": "一个红色圆形", "n": 3, "x": 0.5}
    write_summary(tmp_path, {"rows": 2})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"rows": 2}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_table_round_trips(tmp_path, suffix):
    df = pd.DataFrame({"image_path": ["a.jpg", "b.jpg"], "text": ["一只猫", "a dog"]})
    path = write_table(df, tmp_path / f"t{suffix}")
    back = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
