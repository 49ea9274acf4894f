"""pyproject.toml agrees with the exact pins of requirements*.txt, and the wheel it builds ships the
committed weights (as rrg_core/assets/), the demo's entry point and the rrg command."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SELF = canonicalize_name(PROJECT["name"])


def _pins(path: Path) -> dict[str, Version]:
    """name -> exact version of a requirements file, following its -r includes."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            pins |= _pins(path.parent / line[3:].strip())
        elif line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not an exact pin"
            pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def _declared(*groups: str) -> list[Requirement]:
    """The requirements of pyproject.toml's dependencies ("") and extras, without the self-reference."""
    lines = [r for g in groups for r in (PROJECT["dependencies"] if g == "" else PROJECT["optional-dependencies"][g])]
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != SELF]


@pytest.mark.parametrize("pins, groups", [("requirements.txt", ("", "demo", "train")),
                                          ("requirements-dev.txt", ("", "demo", "train", "dev"))])
def test_the_exact_pins_lie_in_the_declared_ranges(pins, groups):
    pinned = _pins(REPO / pins)
    declared = _declared(*groups)
    assert sorted(canonicalize_name(r.name) for r in declared) == sorted(pinned)  # the same packages
    outside = [f"{r.name} {pinned[canonicalize_name(r.name)]} is not {r.specifier}" for r in declared
               if pinned[canonicalize_name(r.name)] not in r.specifier]
    assert not outside


@pytest.mark.slow
def test_the_wheel_ships_the_weights_the_demo_and_the_rrg_command(tmp_path):
    tree = tmp_path / "tree"  # a copy: setuptools writes build/ and *.egg-info beside the sources
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("rrg_core-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for weights in ("synthcxr", "iu-xray-small"):
            for path in sorted((REPO / "assets" / "weights" / weights).iterdir()):
                shipped = f"rrg_core/assets/weights/{weights}/{path.name}"
                assert archive.read(shipped) == path.read_bytes(), shipped
        assert {f"rrg_core/assets/examples/{p.name}" for p in (REPO / "assets" / "examples").iterdir()} <= names
        assert {f"train/configs/{p.name}" for p in (REPO / "train" / "configs").glob("*.json")} <= names
        assert {"app.py", "rrg_core/__main__.py", "rrg_core/phantoms/__main__.py", "demo/ui.py"} <= names
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "rrg = rrg_core.__main__:main" in archive.read(entry_points).decode().splitlines()
