"""The layers: srgnn.core <- srgnn <- pipelines <- jobs (import-linter contracts in pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken" in proc.stdout, proc.stdout


def test_core_imports_nothing_of_srgnn_outside_itself():
    import grimp

    graph = grimp.build_graph("srgnn")
    outside = sorted((module, imported)
                     for module in graph.find_descendants("srgnn.core") | {"srgnn.core"}
                     for imported in graph.find_modules_directly_imported_by(module)
                     if imported.startswith("srgnn") and imported != "srgnn.core"
                     and not imported.startswith("srgnn.core."))
    assert outside == []


def test_pipelines_and_jobs_build_paths_under_out_through_the_layout():
    """No ``.../run_date=...`` path is assembled outside srgnn.core.layout."""
    offenders = []
    for folder in ("srgnn", "pipelines", "jobs"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "layout.py" and path.parent.name == "core":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if 'run_date={' in code and ('f"' in code or "f'" in code) and "error" not in code.lower() \
                        and "raise" not in code and "log." not in code:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
