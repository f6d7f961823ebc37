"""scripts/update_results_docs.py: the tables between the docs' markers are `bench tables`' own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bench import records
from tests.test_bench_headline import _classifier_record

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "update_results_docs.py"


def _module():
    spec = importlib.util.spec_from_file_location("update_results_docs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _repo(tmp_path: Path, mod) -> Path:
    records.write(_classifier_record({0: 0.05, 1: 0.06}, epochs=10), tmp_path / "results" / "runs" / "a.json")
    (tmp_path / "docs").mkdir()
    docs = ((tmp_path / "README.md", "against the paper"), (tmp_path / "docs" / "results.md", "full tables"))
    for path, name in docs:
        path.write_text(f"# Title\n\nby hand\n\n{mod.BEGIN.format(name)}\n\nold\n\n{mod.END.format(name)}\n\nafter\n")
    return tmp_path


def test_check_finds_stale_tables_and_an_update_writes_them(tmp_path, monkeypatch, capsys):
    mod = _module()
    monkeypatch.setattr(mod, "REPO", _repo(tmp_path, mod))
    assert mod.main(["--check"]) == 1 and "stale: README.md, docs/results.md" in capsys.readouterr().out
    assert "old" in (tmp_path / "README.md").read_text()  # --check changes nothing
    assert mod.main([]) == 0
    readme, full = (tmp_path / "README.md").read_text(), (tmp_path / "docs" / "results.md").read_text()
    assert "by hand" in readme and "after" in readme and "\nold\n" not in readme
    assert "| Table 1, differentiable RAM, T = 8 | 3.36% | 5.50% +- 0.71% (5.00%, 6.00%)" in readme
    assert "(results/runs/a.json)" in readme and "(../results/runs/a.json)" in full
    assert "### Table 1: test error" in full and "### Table 1: test error" not in readme
    assert mod.main(["--check"]) == 0


def test_a_file_without_its_markers_is_refused(tmp_path, monkeypatch):
    mod = _module()
    monkeypatch.setattr(mod, "REPO", _repo(tmp_path, mod))
    (tmp_path / "docs" / "results.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="results.md: needs one '<!-- begin: full tables"):
        mod.main([])


def test_the_working_directory_is_left_as_it_was(tmp_path, monkeypatch):
    mod = _module()
    monkeypatch.setattr(mod, "REPO", _repo(tmp_path, mod))
    before = Path.cwd()
    mod.main(["--check"])
    assert Path.cwd() == before
