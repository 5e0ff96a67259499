"""The pytest markers keep the everyday run (-m "not slow") fast: every test that starts spark-submit,
torchrun or a 2-process training carries `slow`, and every spark-submit test carries `spark`.
A static check of the test sources (no Spark, no torch), so it runs in the everyday set too."""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SPARK_SUBMIT = "spark-submit"
SLOW_SIGNS = (f'"{SPARK_SUBMIT}"', f"/{SPARK_SUBMIT}", '"torchrun"', "nprocs=2", "--nproc_per_node=2")


def _marks(decorators: list[ast.expr]) -> set[str]:
    """Names X of `pytest.mark.X` decorators (or of a `pytestmark = pytest.mark.X` value)."""
    out = set()
    for d in decorators:
        d = d.func if isinstance(d, ast.Call) else d
        if isinstance(d, ast.Attribute) and isinstance(d.value, ast.Attribute) and d.value.attr == "mark":
            out.add(d.attr)
    return out


def _tests_with_marks() -> list[tuple[str, set[str], set[str], str]]:
    """(module::test, its markers including the module's pytestmark, its argument names, its source)."""
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        module_marks = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
                values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
                module_marks |= _marks(values)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                args = {a.arg for a in node.args.args}
                found.append((f"{path.name}::{node.name}", module_marks | _marks(node.decorator_list), args,
                              ast.get_source_segment(source, node) or ""))
    return found


def test_tests_that_start_jobs_in_other_processes_are_slow_and_spark_submit_ones_are_spark():
    tests = _tests_with_marks()
    assert len(tests) > 100
    starters = [(name, marks, args, body) for name, marks, args, body in tests
                if any(sign in body for sign in SLOW_SIGNS)]
    assert len(starters) >= 5                   # the spark-submit, torchrun and 2-process tests exist
    assert [name for name, marks, _, _ in starters if "slow" not in marks] == []
    spark_submit = [(name, marks, args) for name, marks, args, body in starters if SPARK_SUBMIT in body]
    assert len(spark_submit) >= 3
    assert [name for name, marks, args in spark_submit if "spark" not in marks and "spark" not in args] == []


def test_the_marker_reader_sees_decorators_and_module_marks():
    tree = ast.parse("import pytest\npytestmark = [pytest.mark.slow, pytest.mark.spark]\n"
                     "@pytest.mark.gpu\n@pytest.mark.parametrize('x', [1])\ndef test_x(x): pass\n")
    assert _marks(tree.body[1].value.elts) == {"slow", "spark"}
    assert _marks(tree.body[2].decorator_list) == {"gpu", "parametrize"}
