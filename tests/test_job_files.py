"""The job dir's files: strict JSON and atomic writes (segsweep.jobs.files)."""

from __future__ import annotations

import json
import math

import pytest

from segsweep.jobs.files import DiskFullError, write_atomic, write_json


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_and_text_is_left_alone(tmp_path):
    payload = {"name": "sample nullo_12 NaN Infinity", "nan": math.nan, "inf": math.inf, "neg": -math.inf,
               "nested": {"history": [{"val/iou": math.nan, "epoch": 1}, 0.5]}, "tuple": (1.0, math.nan)}
    path = write_json(tmp_path / "metrics.json", payload)
    assert strict(path.read_text()) == {
        "name": "sample nullo_12 NaN Infinity", "nan": None, "inf": None, "neg": None,
        "nested": {"history": [{"val/iou": None, "epoch": 1}, 0.5]}, "tuple": [1.0, None]}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"status": "completed"})

    def half_then_fail(file):
        file.write(b'{"status": "runn')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_atomic(path, half_then_fail)
    assert strict(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_full_disk_names_the_file_and_the_free_space(tmp_path):
    def no_space(file):
        raise OSError(28, "No space left on device")

    with pytest.raises(DiskFullError) as caught:
        write_atomic(tmp_path / "checkpoints" / "last.ckpt", no_space)
    message = str(caught.value)
    assert message.startswith(f"no space left on device writing {tmp_path / 'checkpoints' / 'last.ckpt'} (")
    assert message.endswith("free there)") and "\n" not in message
    assert caught.value.__suppress_context__  # no chained 50-line traceback
    assert list((tmp_path / "checkpoints").iterdir()) == []
