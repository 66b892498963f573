"""The airbench93 benchmark script changes the downloaded package only where it says, or stops."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "airbench_cpu_2026-12-06" / "airbench93_cpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("airbench93_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _package(tmp_path: Path, script) -> Path:
    """A stand-in package folder holding each expected text once, among other lines."""
    for name in {c[0] for c in script.CPU_CHANGES}:
        texts = [text for file, text, _, _ in script.CPU_CHANGES if file == name]
        (tmp_path / name).write_text("x = 1\n" + "\n".join(f"    {t}  # kept" for t in texts) + "\n")
    return tmp_path


def test_the_cpu_changes_replace_each_expected_text_and_nothing_else(tmp_path):
    script = _load()
    package = _package(tmp_path, script)
    script.apply_cpu_changes(package)
    for name, text, replacement, _ in script.CPU_CHANGES:
        source = (package / name).read_text()
        assert text not in source and f"    {replacement}  # kept" in source
        assert source.startswith("x = 1\n")


def test_code_other_than_expected_stops_the_run_with_one_line(tmp_path):
    script = _load()
    package = _package(tmp_path, script)
    name, text = script.CPU_CHANGES[0][:2]
    (package / name).write_text((package / name).read_text().replace(text, "something else"))
    with pytest.raises(SystemExit, match="expected 1 x"):
        script.apply_cpu_changes(package)


def test_the_wall_clock_event_reports_milliseconds_as_cuda_events_do():
    script = _load()
    start, end = script.WallClockEvent(), script.WallClockEvent()
    start.t, end.t = 10.0, 10.25
    assert start.elapsed_time(end) == pytest.approx(250.0)
