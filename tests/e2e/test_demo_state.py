"""The demo's folder rules: a second run into the same folder resumes or refuses, and never mixes outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diehardlab.demo.pipeline import STATE, Budget, Demo

from diehardlab.errors import DiehardError


def _demo(out: Path, quick: bool = True, seed: int = 1) -> Demo:
    return Demo(out, Budget.for_mode(quick), seed, echo=lambda s: None)


def test_interrupted_step_is_redone_from_scratch_and_done_steps_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    d = _demo(out)
    d.open()
    a = out / "a.txt"
    d.step(1, 2, "first", [a], lambda: a.write_text("first") and "wrote a")
    partial = out / "b"
    partial.mkdir()
    (partial / "half.log").write_text("written before the interruption")

    def interrupted() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        d.step(2, 2, "second", [partial], interrupted)
    state = json.loads((out / STATE).read_text())
    assert state["steps"]["first"]["done"] and not state["steps"]["second"]["done"]

    calls = []
    d2 = _demo(out)
    d2.open()
    d2.step(1, 2, "first", [a], lambda: calls.append("first") or "again")
    seen_partial = []

    def second() -> str:
        seen_partial.append((partial / "half.log").exists())
        partial.mkdir()
        return "done"

    d2.step(2, 2, "second", [partial], second)
    assert calls == []  # the finished step was not run again
    assert seen_partial == [False]  # the interrupted step's partial output was removed before it ran again
    assert a.read_text() == "first"


def test_finished_demo_refuses_a_second_run(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    d = _demo(out)
    d.open()
    d.state["finished"] = True
    d.state["report"] = str(out / "report.html")
    d.save()
    with pytest.raises(DiehardError, match="already holds a finished demo"):
        _demo(out).open()


def test_other_settings_or_a_foreign_folder_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    _demo(out, quick=True).open()
    with pytest.raises(DiehardError, match="other settings"):
        _demo(out, quick=False).open()
    with pytest.raises(DiehardError, match="other settings"):
        _demo(out, seed=2).open()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(DiehardError, match="not a demo folder"):
        _demo(foreign).open()
    assert (foreign / "thesis.tex").read_text() == "x"
