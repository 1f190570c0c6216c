"""The plugin's options: validation, help text, and staying import-light."""

from __future__ import annotations

import subprocess
import sys

import pytest

OPTIONS = (
    "--model-family",
    "--families-file",
    "--thresholds",
    "--base",
    "--sft",
    "--instruct",
    "--mechtests-device",
    "--mechtests-dtype",
    "--mechtests-backend",
    "--mechtests-cache",
    "--mechtests-datasets",
    "--claim-report",
    "--max-examples",
)


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


def test_a_bad_thresholds_file_is_usage_error(pytester: pytest.Pytester) -> None:
    bad = pytester.makefile(
        ".yaml", thresholds="claims:\n  truth.direction.cosine: {op: '=>', value: 1}\n"
    )
    result = pytester.runpytest_subprocess("--pyargs", "mechtests.suite", "--thresholds", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*thresholds.yaml*"])
