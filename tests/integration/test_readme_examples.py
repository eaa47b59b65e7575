"""The README's TOML examples and the example configuration pass ``hermes check``.

Every TOML block of README.md (indented or fenced) is found, completed into a minimal
configuration where it is a fragment (a platform for its routes and job targets, its
secret references resolvable), and checked by ``hermes check`` as a subprocess. A README
example with an unknown key fails this test (proven below), so the documentation cannot
drift from what the gateway accepts.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.proc import HERMES, REPO, run_cli

README = REPO / "README.md"
EXAMPLE = REPO / "deploy" / "gateway.example.toml"

TABLE_HEADER = re.compile(r"\s*\[\[?\s*[A-Za-z0-9_.\"' -]+\]\]?\s*(#.*)?")
"""A TOML table header, ``[platforms.qq-main]`` or ``[[routes]]``: what a TOML example
starts with, and what no shell, SQL or output block of the README does."""
KEY_VALUE = re.compile(r"[A-Za-z0-9_.\"'-]+\s*=\s*\S.*")
"""``key = value``: a fragment without its table header is still TOML (and then fails the
check as an unknown top-level key, so that its header gets written)."""
FENCE = re.compile(r"^(```|~~~)\s*(\S*)")
SECRET_REF = re.compile(r"^(env|file|credential):(.+)$")


@dataclass(frozen=True)
class Example:
    line: int
    """Where the block starts in its file (1-based)."""
    text: str


def blocks(markdown: str) -> Iterator[Example]:
    """Every code block: fenced (with its info string) or indented by four spaces."""
    lines = markdown.splitlines()
    i = 0
    previous_blank = True
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith(fence.group(1)):
                body.append(lines[i])
                i += 1
            info = fence.group(2).lower()
            yield Example(start + 2, ("#!toml\n" if info == "toml" else "") + "\n".join(body))
        elif previous_blank and line.startswith("    ") and line.strip():
            start, body = i, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            yield Example(start + 1, "\n".join(body).strip("\n"))
            previous_blank = True
            continue
        previous_blank = not line.strip()
        i += 1


def toml_examples(markdown: str) -> list[Example]:
    """The blocks that are TOML: fenced as ``toml``, or whose first line (after comments)
    is a table header or ``key = value``. A block that looks like TOML must parse: a broken
    one fails here, it is not skipped."""
    found = []
    for block in blocks(markdown):
        declared = block.text.startswith("#!toml\n")
        text = block.text.removeprefix("#!toml\n")
        meaningful = (
            ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
        )
        first = next(meaningful, "")
        if not (declared or TABLE_HEADER.fullmatch(first) or KEY_VALUE.fullmatch(first)):
            continue
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise AssertionError(
                f"README.md:{block.line}: TOML example does not parse: {exc}"
            ) from None
        found.append(Example(block.line, text))
    return found


def complete(text: str, workdir: Path) -> tuple[str, dict[str, str]]:
    """A whole configuration from an example: the platforms its routes and jobs name (or one)
    added as demo platforms, and an environment in which its secret references resolve."""
    doc = tomllib.loads(text)
    platforms = doc.get("platforms", {})
    wanted = {r["platform"] for r in doc.get("routes", []) if "platform" in r}
    wanted |= {t.split(":", 1)[0] for j in doc.get("jobs", []) for t in j.get("targets", [])}
    if not platforms and not wanted:
        wanted = {"example"}
    extra = "".join(
        f'\n[platforms."{name}"]\nadapter = "demo"\n' for name in sorted(wanted - set(platforms))
    )
    credentials = workdir / "credentials"
    credentials.mkdir(exist_ok=True)
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "PYTHONPATH": f"{workdir}:{REPO}"}
    # An operator's own handler module (``function = "mybot.handlers:ask"``): a stand-in.
    for spec in {
        t["function"] for t in doc.get("routes", []) + doc.get("jobs", []) if "function" in t
    }:
        module, _, function = spec.partition(":")
        path = workdir.joinpath(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"def {function}(*args, **kwargs):\n    return None\n")
    for value in _strings(doc.get("platforms", {})) + _strings(doc.get("store", {})):
        ref = SECRET_REF.match(value)
        if not ref:
            continue
        kind, name = ref.groups()
        if kind == "env":
            env[name] = "example-secret"
        elif kind == "credential":
            (credentials / name).write_text("example-secret")
        elif not Path(name).is_absolute():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / name).write_text("example-secret")
    return text + "\n" + extra, env


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def check(text: str, workdir: Path, name: str) -> tuple[int, str]:
    """``hermes check`` on the completed example; its exit code and output."""
    workdir.mkdir(parents=True, exist_ok=True)
    config, env = complete(text, workdir)
    path = workdir / name
    path.write_text(config, encoding="utf-8")
    result = run_cli(HERMES, "check", "--config", str(path), env=env)
    return result.returncode, f"{config}\n--- hermes check:\n{result.stdout}{result.stderr}"


README_EXAMPLES = toml_examples(README.read_text(encoding="utf-8"))


def test_the_readme_has_toml_examples_for_platforms_routes_and_jobs():
    # Fails loudly if the extraction stops finding them (a changed layout, say).
    tops = {
        re.sub(r"[\[\]]", "", ln.strip()).split(".")[0]
        for ex in README_EXAMPLES
        for ln in ex.text.splitlines()
        if TABLE_HEADER.fullmatch(ln)
    }
    assert len(README_EXAMPLES) >= 3, README_EXAMPLES
    assert {"platforms", "routes", "jobs"} <= tops, tops


@pytest.mark.parametrize("example", README_EXAMPLES, ids=lambda e: f"README.md:{e.line}")
def test_a_readme_example_passes_hermes_check(example, tmp_path):
    code, output = check(example.text, tmp_path, "example.toml")
    assert code == 0, f"README.md:{example.line}:\n{output}"


def test_the_example_configuration_passes_hermes_check(tmp_path):
    code, output = check(EXAMPLE.read_text(encoding="utf-8"), tmp_path, "gateway.toml")
    assert code == 0, output


def test_an_unknown_key_in_a_readme_example_fails_this_check(tmp_path):
    """The proof that the documentation cannot drift: the README with one key misspelt."""
    readme = README.read_text(encoding="utf-8")
    example = next(e for e in toml_examples(readme) if "[platforms." in e.text)
    header = next(ln for ln in example.text.splitlines() if ln.startswith("[platforms."))
    drifted = readme.replace(f"    {header}\n", f"    {header}\n    intnets = []\n", 1)
    assert drifted != readme
    (broken,) = [e for e in toml_examples(drifted) if "intnets" in e.text]
    code, output = check(broken.text, tmp_path, "example.toml")
    assert code == 78, output
    assert "intnets: unknown key" in output
