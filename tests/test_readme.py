"""Every snippet in the README runs as written, offline, with the tiny components in place of the Hub ids.

The README's "Try every snippet offline" table says which `longclip tiny` folder stands in for which Hub id; this
test reads that table from the README itself, so the documentation and the test cannot drift apart. Blocks run
in README order in one working folder (a later block may use what an earlier one wrote, as a reader would):
`python` blocks in a fresh interpreter, `bash` blocks line by line with `bash -e`. `text` blocks are synopses
(placeholders such as SRC and OUT) and recipes for real data and GPUs; they are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.common import REPO_ROOT

README = REPO_ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
TABLE_ROW = re.compile(r"^\| `([^`]+)` \| `tiny/([^`]+)` \|", re.MULTILINE)
# The two set-up commands are what CI itself runs (.ci/run); running them again here would reinstall everything.
SETUP = "scripts/setup.sh"


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block that is meant to run, in README order."""
    blocks = [(language, code) for language, code in FENCE.findall(README.read_text(encoding="utf-8"))]
    return [(language, code) for language, code in blocks if language in ("python", "bash") and SETUP not in code]


def offline_substitutions() -> dict[str, str]:
    """Hub id -> tiny folder (relative to the `longclip tiny` output), from the README's table."""
    return dict(TABLE_ROW.findall(README.read_text(encoding="utf-8")))


BLOCKS = readme_blocks()


def test_the_readme_has_runnable_snippets_and_an_offline_table():
    languages = [language for language, _ in BLOCKS]
    assert languages.count("python") >= 4 and languages.count("bash") >= 3
    assert len(offline_substitutions()) >= 5
    assert BLOCKS[0] == ("bash", "longclip tiny tiny\n"), "the first snippet writes the tiny stand-ins"
    untagged = [code for language, code in FENCE.findall(README.read_text(encoding="utf-8")) if not language]
    assert not untagged, f"tag every README block python, bash or text: {untagged[0][:80]!r}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An empty working folder: the README's first block (`longclip tiny tiny`) writes `tiny/` into it."""
    return tmp_path_factory.mktemp("readme")


def offline(code: str) -> str:
    """The snippet with every Hub id of the README's table replaced by its tiny stand-in."""
    for hub_id, tiny in sorted(offline_substitutions().items(), key=lambda item: -len(item[0])):
        code = code.replace(hub_id, f"tiny/{tiny}")
    return code


@pytest.mark.parametrize(("language", "code"), BLOCKS, ids=[f"{i}-{lang}" for i, (lang, _) in enumerate(BLOCKS)])
def test_snippet_runs_as_written(language, code, workspace):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-c", offline(code)] if language == "python" else ["bash", "-e", "-c", offline(code)]
    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"README snippet failed:\n{offline(code)}\n--- stderr ---\n{result.stderr[-4000:]}"
