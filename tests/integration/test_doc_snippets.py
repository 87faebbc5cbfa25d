"""Every ``python`` code block of README.md and of docs/ runs, so that the docs never drift from
the code. The user guide's blocks run in order as one session (tests/integration/
test_examples.py); every other document's blocks run here, in order, in one namespace per
document, in an empty directory. A block that needs what a test machine lacks (a bucket, a
device) says so on its first line (``# needs: ...``) and is compiled, not run. The other
documents may use ``store``: an open store on local files, as a reader of those pages has one
from the guide.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import streamlib

ROOT = Path(__file__).parents[2]
NEEDS = "# needs: "
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SESSION = {ROOT / "docs" / "guide.md"}
"""Documents whose blocks run as one session of their own elsewhere (test_examples.py)."""


def snippets(path: Path) -> list[tuple[int, str]]:
    """A document's ``python`` code blocks, each with the line its code starts on."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)]


def test_every_document_with_code_is_covered() -> None:
    with_code = {path for path in DOCUMENTS if snippets(path)}
    assert ROOT / "README.md" in with_code and with_code >= SESSION
    assert len(with_code - SESSION) >= 5  # the docs as they are: none was lost to a bad match


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if p not in SESSION and snippets(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_document_s_snippets_run(path: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = streamlib.open(tmp_path / "store")
    namespace: dict[str, Any] = {"streamlib": streamlib, "store": store}
    try:
        for line, code in snippets(path):
            compiled = compile(code, f"{path}:{line}", "exec")  # each must at least parse
            if code.startswith(NEEDS):
                assert code.splitlines()[0].strip() != NEEDS.strip(), f"{path}:{line}"
                continue
            exec(compiled, namespace)  # the document's own code, as a reader runs it
    finally:
        for value in {id(v): v for v in (store, *namespace.values())}.values():
            if isinstance(value, streamlib.StreamStore):
                value.close()
