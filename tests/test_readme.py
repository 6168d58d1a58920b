"""Every command line in README.md works as written (issue 16, item 5).

How command lines are found (follow these when you add one to the README):

- Code blocks: fenced blocks tagged ``sh``, ``bash``, ``console``, ``shell`` or
  untagged, and indented (four-space) blocks. ``toml``, ``python``, ``yaml``...
  blocks are not command lines.
- A command line starts with one of ``COMMANDS`` (``relay``, ``scripts/...``,
  ``.venv/bin/python``, ``swaks``, ``curl``, ``docker``); a leading ``$ `` is
  dropped. A ``#`` after two spaces starts a comment. A line ending in ``\\``,
  or a following line that starts with white space, continues the command.
- Synopsis notation is allowed: ``[optional]``, ``a|b`` (alternatives),
  ``...`` (repeats), and UPPERCASE placeholders (``NAME``, ``USER@DOMAIN``).

What is checked:

- ``relay`` lines are parsed by the real parser (``relay.cli.parse``) with the
  optional parts included, the first alternative taken and each placeholder
  replaced by a value its option accepts (a choice, a number); an unknown verb
  or option fails the test. ``relay emulate`` options go through the
  emulator's parser. Every verb's ``--help`` runs too.
- ``relay`` lines with no placeholder whose verb is in ``RUN`` are run for real
  against a database the test seeds (the demo tenant, agency-a and shop) and
  must exit 0.
- ``scripts/X`` and ``bench/X.py``: the file exists; shell scripts pass
  ``bash -n``; bench scripts answer ``--help``.
- ``swaks``, ``curl``, ``docker``: only that the line splits as a shell would
  (they need a running relay or a Docker engine); ``SYNTAX_ONLY`` says so.
  A line that cannot be checked at all goes in ``ALLOWED`` with the reason.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.cli import build_parser, main, parse
from relay.cli.demo import seed
from relay.core.settings import load_settings
from relay.emulator.server import _parser as emulator_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
COMMANDS = ("relay ", "scripts/", ".venv/bin/python", "swaks", "curl", "docker")
SHELL_TAGS = {"", "sh", "bash", "console", "shell"}
SYNTAX_ONLY = {"swaks": "needs the demo running", "curl": "needs a relay", "docker": "no engine"}
# Exact command lines that cannot be checked, with why.
ALLOWED: dict[str, str] = {}
# Verbs run for real when the line has no placeholder (the rest need live
# providers, DNS, a mail server or a terminal, or serve forever).
RUN = {
    ("account", "list"),
    ("account", "create"),
    ("credential", "reset"),
    ("credential", "list"),
    ("token", "create"),
    ("token", "list"),
    ("provider", "list"),
    ("queue", "list"),
    ("sender", "list"),
    ("usage", None),
    ("audit", None),
    ("migrate", None),
    ("config", "check"),
}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_@.:]*(/[a-z]+)?$|^\.\.\.$|^[A-Z_]+@[A-Z_]+$")
# Paths the README names on an operator's host, and what the tests use instead.
HOST_PATHS = {"/etc/relay/relay.toml": str(ROOT / "config" / "relay.toml")}


@dataclass(frozen=True)
class Line:
    number: int
    text: str


def command_lines(text: str) -> Iterator[Line]:
    """The command lines of the README's shell blocks, continuations joined."""
    fenced: list[tuple[int, str]] = []
    indented: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if fence is not None:
            if line.startswith("```"):
                if fence in SHELL_TAGS:
                    yield from _commands(fenced)
                fence = None
            else:
                fenced.append((number, line))
        elif line.startswith("```"):
            yield from _commands(indented)
            indented, fenced, fence = [], [], line[3:].strip()
        elif line.startswith("    ") and (indented or not _in_list(text, number)):
            indented.append((number, line[4:]))
        elif line.strip():
            yield from _commands(indented)
            indented = []
    yield from _commands(indented)


def _in_list(text: str, number: int) -> bool:
    """An indented line that continues a list item is not a code block."""
    previous = text.splitlines()[number - 2] if number > 1 else ""
    return bool(previous.strip())


def _commands(block: list[tuple[int, str]]) -> Iterator[Line]:
    current: Line | None = None
    for number, raw in block:
        line = raw.split("  #", 1)[0].rstrip()
        line = line[2:] if line.startswith("$ ") else line
        if current is not None and (raw[:1].isspace() or current.text.endswith("\\")):
            if line.strip():
                current = Line(current.number, current.text.rstrip("\\ ") + " " + line.strip())
            continue
        if current is not None:
            yield current
            current = None
        if line.startswith(COMMANDS) or line == "relay":
            current = Line(number, line)
    if current is not None:
        yield current


ALL = list(command_lines(README.read_text("utf-8")))


def _ids(lines: list[Line]) -> list[str]:
    return [f"L{line.number}:{line.text[:50]}" for line in lines]


def _relay_lines() -> list[Line]:
    return [line for line in ALL if line.text.split()[0] == "relay"]


def _words(text: str) -> list[str]:
    """The synopsis as one concrete command line: optional parts in, first of each
    alternative, repeats dropped (``...`` right after an option is its value)."""
    text = text.replace("[", " ").replace("]", " ")
    out: list[str] = []
    for word in shlex.split(text):
        word = word.split("|")[0] if "|" in word else word
        if word == "..." and not (out and out[-1].startswith("--")):
            continue
        out.append(word)
    return out


def _verb_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the verb ``argv`` names (through the sub-commands)."""
    parser = build_parser()
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word.startswith("-"):
            continue
        if word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


def _value_for(parser: argparse.ArgumentParser, option: str | None, word: str) -> str:
    """A value that the option (or positional) takes, for a placeholder."""
    actions = [a for a in parser._actions if option in a.option_strings] if option else []
    if not actions:
        positional = [a for a in parser._actions if not a.option_strings and a.type is int]
        return "1" if option is None and positional and word in ("ID", "N") else "x.test"
    action = actions[0]
    if "/" in word:  # a rate: N/s, N/min, N/day
        return "1/" + word.split("/", 1)[1]
    if action.choices:
        return str(next(iter(action.choices)))
    if action.type is int or word == "N":
        return "1"
    return "x.test"


def concrete(text: str) -> list[str]:
    """The README line as arguments for ``relay`` (placeholders filled in)."""
    words = _words(text)[1:]
    parser = (
        emulator_parser()
        if words[:1] == ["emulate"]
        else _verb_parser([w for w in words if not PLACEHOLDER.match(w)])
    )
    out: list[str] = []
    for i, word in enumerate(words):
        if PLACEHOLDER.match(word) or word == "FILE":
            before = words[i - 1] if i and words[i - 1].startswith("--") else None
            out.append(_value_for(parser, before, word))
        else:
            out.append(word)
    return out


def has_placeholder(text: str) -> bool:
    return any(c in text for c in "[]|") or any(PLACEHOLDER.match(w) for w in _words(text))


@pytest.mark.parametrize("line", _relay_lines(), ids=_ids(_relay_lines()))
def test_relay_lines_parse(line: Line, capsys: pytest.CaptureFixture[str]) -> None:
    if line.text in ALLOWED:
        pytest.skip(ALLOWED[line.text])
    argv = concrete(line.text)
    try:
        args = parse(argv)
        if args.command == "emulate":
            emulator_parser().parse_args(args.emulator_args)
    except SystemExit:
        pytest.fail(
            f"README line {line.number}: {line.text!r} does not parse: {capsys.readouterr().err}"
        )
    verb = getattr(args, f"{args.command}_verb", None)
    with pytest.raises(SystemExit) as helped:
        if args.command == "emulate":  # its own parser answers --help
            emulator_parser().parse_args(["--help"])
        parse([args.command, *([verb] if verb else []), "--help"])
    assert helped.value.code == 0


def test_a_wrong_line_would_fail() -> None:
    """The extraction and the parse catch what does not exist."""
    sample = "Run:\n\n    relay account lsit\n    relay account list --everything\n"
    found = [line.text for line in command_lines(sample)]
    assert found == ["relay account lsit", "relay account list --everything"]
    for text in found:
        with pytest.raises(SystemExit):
            parse(concrete(text))


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"sqlite:///{tmp_path}/readme.db")
    monkeypatch.setenv("RELAY_SERVER_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RELAY_AUTH_ARGON2_TIME_COST", "1")
    monkeypatch.setenv("RELAY_AUTH_ARGON2_MEMORY_KIB", "1024")
    for key in ("RELAY_CONFIG", "RELAY_URL", "RELAY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    seed(load_settings())
    assert main(["account", "create", "agency-a"]) == 0
    assert main(["account", "create", "shop", "--agency", "agency-a"]) == 0
    return tmp_path


def _runnable() -> list[Line]:
    out = []
    for line in _relay_lines():
        if has_placeholder(line.text) or line.text in ALLOWED:
            continue
        words = [w for w in shlex.split(line.text)[1:] if not w.startswith("-")]
        if (words[0], words[1] if len(words) > 1 else None) in RUN or (words[0], None) in RUN:
            out.append(line)
    return out


@pytest.mark.parametrize("line", _runnable(), ids=_ids(_runnable()))
def test_relay_lines_run(line: Line, seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([HOST_PATHS.get(w, w) for w in shlex.split(line.text)[1:]])
    assert code == 0, capsys.readouterr().err


def _other_lines() -> list[Line]:
    return [line for line in ALL if line.text.split()[0] != "relay"]


@pytest.mark.parametrize("line", _other_lines(), ids=_ids(_other_lines()))
def test_other_lines(line: Line) -> None:
    words = shlex.split(line.text)  # it splits as a shell would, at least
    if words[0] in SYNTAX_ONLY:
        return
    for word in words:
        if word.startswith("scripts/"):
            script = ROOT / word
            assert script.is_file(), f"README line {line.number}: no {word}"
            assert subprocess.run(["bash", "-n", str(script)], timeout=60).returncode == 0
        if word.startswith("bench/") and word.endswith(".py"):
            bench = ROOT / word
            assert bench.is_file(), f"README line {line.number}: no {word}"
            done = subprocess.run(
                [sys.executable, str(bench), "--help"], capture_output=True, timeout=120
            )
            assert done.returncode == 0, done.stderr


def test_the_readme_has_command_lines() -> None:
    texts = [line.text for line in ALL]
    assert "scripts/run" in texts and any(t.startswith("relay provider add") for t in texts)
    assert len(_runnable()) >= 5
