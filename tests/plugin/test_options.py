"""The plugin's options: validation, help text, and staying import-light and lazy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mechtests import plugin


class _RecordingParser:
    """Stands in for pytest's parser and its groups: keeps every long option name added."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def getgroup(self, *args: Any, **kwargs: Any) -> _RecordingParser:
        return self

    def addoption(self, *names: str, **kwargs: Any) -> None:
        self.names.extend(name for name in names if name.startswith("--"))

    def addini(self, *args: Any, **kwargs: Any) -> None:
        pass


def _registered_options() -> list[str]:
    parser = _RecordingParser()
    plugin.pytest_addoption(parser)  # type: ignore[arg-type]
    return parser.names


OPTIONS = _registered_options()


def test_the_option_list_is_read_from_the_plugin() -> None:
    assert {"--model-family", "--claim-report", "--max-examples", "--baseline"} <= set(OPTIONS)
    assert len(OPTIONS) == len(set(OPTIONS))


def test_unknown_family_is_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--pyargs", "mechtests.suite", "--model-family", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown model family 'nope'; expected one of:*organism*tiny*"])


def test_help_lists_every_option_with_its_default(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    text = result.stdout.str()
    assert "mechtests: post-training claim tests" in text
    group = text.split("mechtests: post-training claim tests", 1)[1]
    for option in OPTIONS:
        assert option in group, option
        block = group.split(option, 1)[1].split("\n  --", 1)[0]
        assert "Default:" in block, f"{option} has no default in its help"


@pytest.mark.parametrize(
    "args", [["--help"], ["--pyargs", "mechtests.suite", "--collect-only", "-q"]]
)
def test_help_and_collection_do_not_import_torch(args: list[str]) -> None:
    code = (
        f"import sys, pytest; pytest.main({args!r});"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-2000:] + out.stderr[-2000:]


def test_a_run_in_an_unrelated_project_imports_no_torch_and_reads_no_yaml(
        tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text("def test_addition():\n    assert 1 + 1 == 2\n")
    code = (
        "import sys, pytest\n"
        "opened = []\n"
        "sys.addaudithook(lambda event, args: opened.append(str(args[0])) "
        "if event == 'open' else None)\n"
        "code = pytest.main(['-q', '-p', 'no:cacheprovider', 'test_plain.py'])\n"
        "yaml = [p for p in opened if p.endswith(('.yaml', '.yml'))]\n"
        "print('RESULT', int(code), 'mechtests.plugin' in sys.modules, "
        "'torch' in sys.modules, yaml)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=False)
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    # exit code 0, the plugin loaded (entry point), no torch, no YAML file opened
    assert result == ["RESULT 0 True False []"], out.stdout[-2000:] + out.stderr[-2000:]


def test_a_bad_thresholds_file_is_usage_error(pytester: pytest.Pytester) -> None:
    bad = pytester.makefile(
        ".yaml", thresholds="claims:\n  truth.direction.cosine: {op: '=>', value: 1}\n"
    )
    result = pytester.runpytest_subprocess("--pyargs", "mechtests.suite", "--thresholds", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*thresholds.yaml*"])


def test_a_bad_option_under_xdist_is_one_line_before_any_worker_starts(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest_subprocess(
        "--pyargs", "mechtests.suite", "-n", "2", "--max-examples", "0",
        "--claim-report", str(pytester.path / "reports"),
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert errors == [
        "ERROR: preflight: --max-examples is 0; expected a number >= 1 (examples per dataset) "
        "or all. Fix: pass --max-examples N with N >= 1, --max-examples all for every example, "
        "or leave it out for the family's default."
    ]
    assert "workers" not in result.stdout.str()
    assert not (pytester.path / "reports").exists()


def test_the_problem_lines_name_each_failed_or_errored_cell_once() -> None:
    from mechtests.plugin.recorder import problem_lines

    def rec(verdict: str, message: str) -> dict[str, object]:
        return {"claim_id": "truth.x", "family": "tiny", "pair": ["base", verdict.lower()],
                "verdict": verdict, "message": message}

    lines = problem_lines([rec("PASS", "ok"), rec("FAIL", "0.1 < 0.8"),
                           rec("ERROR", "CacheError: NaN.\nmore")])
    assert lines == ["ERROR truth.x on tiny (base->error): CacheError: NaN. more",
                     "FAIL truth.x on tiny (base->fail): 0.1 < 0.8"]


def test_the_matrix_records_each_family_s_examples_per_dataset() -> None:
    from mechtests.families import load_families
    from mechtests.plugin.recorder import examples_per_family

    families = {name: load_families()[name] for name in ("gemma3-270m", "organism")}
    assert examples_per_family(None, families) == {"gemma3-270m": 40, "organism": "all"}
    assert examples_per_family("8", families) == {"gemma3-270m": 8, "organism": 8}
    assert examples_per_family("all", families) == {"gemma3-270m": "all", "organism": "all"}
