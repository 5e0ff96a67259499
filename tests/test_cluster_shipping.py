"""The code zip that get_spark ships to the executors, without Spark (tests/test_cluster.py runs it
on a real cluster)."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from pipelines import spark as S
from srgnn.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    src = tmp_path / "src"
    for pkg in S.PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg)
    (src / "srgnn" / "__pycache__").mkdir(exist_ok=True)
    (src / "srgnn" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    monkeypatch.setenv(S.CACHE_ENV, str(tmp_path / "cache"))
    return src


def test_the_zip_holds_the_packages_and_is_named_by_their_content(checkout):
    first = S.code_zip(checkout)
    names = zipfile.ZipFile(first).namelist()
    assert "srgnn/__init__.py" in names and "pipelines/spark.py" in names
    assert "srgnn/csrc/srgnn_fused_cpu.cpp" in names and "srgnn/core/layout.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert len(names) == len(list(checkout.rglob("*.py"))) + 1
    data = first.read_bytes()
    first.unlink()
    assert S.code_zip(checkout) == first and first.read_bytes() == data      # the same sources, the same bytes
    (checkout / "pipelines" / "graph.py").write_text("# changed\n", encoding="utf-8")
    changed = S.code_zip(checkout)
    assert changed != first and changed.name.startswith("srgnn_code-")
    assert zipfile.ZipFile(changed).read("pipelines/graph.py") == b"# changed\n"


def test_a_wheel_is_added_as_a_zip_copy_of_itself(tmp_path, monkeypatch):
    monkeypatch.setenv(S.CACHE_ENV, str(tmp_path / "cache"))
    wheel = tmp_path / "srgnn_pipeline-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("srgnn/__init__.py", "")
    copy = S.wheel_as_zip(str(wheel))
    assert copy.suffix == ".zip" and copy.name.startswith("srgnn_pipeline-0.1.0-py3-none-any-")
    assert copy.read_bytes() == wheel.read_bytes()


def test_ship_mode_and_the_editable_install(monkeypatch):
    monkeypatch.delenv(S.SHIP_ENV, raising=False)
    assert S.ship_mode() == "auto"
    monkeypatch.setenv(S.SHIP_ENV, "Never")
    assert S.ship_mode() == "never"
    monkeypatch.setenv(S.SHIP_ENV, "sometimes")
    with pytest.raises(ConfigError, match="SRGNN_SHIP_CODE='sometimes': expected auto, always or never"):
        S.ship_mode()
    assert S.source_root() == ROOT
    assert S.installed_wheel() is False   # this checkout runs from source (editable install or PYTHONPATH)
