"""A non-editable install carries every file the code reads from its own packages: the wheel built
from pyproject.toml holds them, and the installed packages work from another directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from models.fast import native

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "datasets", "models")


def _native_sources() -> set[str]:
    """The C source and every header it includes (quoted includes, followed), relative to the repo."""
    seen, todo = set(), [native.SOURCE]
    while todo:
        path = todo.pop()
        rel = path.relative_to(REPO).as_posix()
        if rel in seen:
            continue
        seen.add(rel)
        todo += [path.with_name(name) for name in re.findall(r'^#include "([^"]+)"', path.read_text(), re.MULTILINE)]
    return seen


def _package_data_files() -> set[str]:
    """Every non-Python file a clean clone has under the packages (git's list; the folders' own
    files where this is not a git checkout)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--", *PACKAGES], cwd=REPO, capture_output=True, text=True,
                                check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = [p.relative_to(REPO).as_posix() for pkg in PACKAGES for p in (REPO / pkg).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts]
    return {f for f in listed if not f.endswith(".py")}


def test_the_cache_key_hashes_every_file_the_native_build_reads():
    assert _native_sources() == {p.relative_to(REPO).as_posix() for p in native.SOURCES}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel setuptools builds from a copy of the project (offline, no build isolation)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", build, str(tmp / "dist")], cwd=src, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "dist" / proc.stdout.strip().splitlines()[-1]


def test_the_wheel_holds_the_native_sources_and_every_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = _native_sources() | _package_data_files()
    assert needed - names == set(), "add them to [tool.setuptools.package-data] in pyproject.toml"
    assert {"models/fast/native_draw_body.h", "models/fast/native_kernels_body.h"} <= needed


def test_the_installed_packages_run_from_another_directory(wheel, tmp_path):
    """The wheel unpacked alone on the path (what `pip install .` puts in site-packages), run from an
    unrelated folder: the packages come from there, the CLIs start, and the C source preprocesses
    with the installed headers."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    script = textwrap.dedent("""
        import contextlib, io, os, shutil, subprocess, sys
        from pathlib import Path
        import bench.cli, datasets.cli, models.fast.native as native
        site = Path(sys.argv[1]).resolve()
        for mod in (bench.cli, datasets.cli, native):
            assert Path(mod.__file__).resolve().is_relative_to(site), mod.__file__
        for main in (bench.cli.main, datasets.cli.main):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main(["--help"])
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if cc:
            proc = subprocess.run([cc, "-E", "-o", os.devnull, str(native.SOURCE)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        print("ok", bool(cc))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", script, str(site)], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_ci_runs_the_readme_test_command_and_stops_when_any_part_of_it_fails(tmp_path):
    """.ci/run runs the README's set-up + test line verbatim; under set -e a failure before the last &&
    would not stop it, so the line ends with || exit 1. Checked by running that line with a failing
    set-up in a shell with the script's options."""
    readme = (REPO / "README.md").read_text()
    command = next(line.strip() for line in readme.splitlines() if "pip install" in line and "pytest" in line)
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if command in line]
    assert ci_lines == [f"{command} || exit 1"]
    failing = ci_lines[0].replace("python3 -m venv .venv", "false")
    done = subprocess.run(["bash", "-c", f"set -euo pipefail; {failing}; echo went on"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=30)
    assert done.returncode == 1 and "went on" not in done.stdout
