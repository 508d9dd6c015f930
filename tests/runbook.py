"""Docs as tests: run the shell blocks of a runbook, in order, as an operator would.

The conventions a runbook follows are in docs/runbooks/README.md ("Runbooks are tests"). In short:
every ```sh block is run, one logical command at a time, in one shell session (the working directory
and variables carry over from one command to the next, as in a terminal); a block preceded by
``<!-- not run: REASON -->`` is not; a trailing ``# exit N`` (or ``# exit N or M``) says the exit code
the command has (otherwise 0), and each ``"TEXT"`` quoted in a trailing comment must appear in what the
command prints. Absolute paths under the operator's directories (/opt, /srv, ...) are re-rooted into a
per-test directory, and placeholders (``HEX``, ``<ROOT-FINGERPRINT>``, ``NEW.pex``...) are bound by the
test to computed values.

A test ("scenario") prepares what the runbook assumes exists (an appliance delivered on a medium, a
mirror store...), binds the placeholders, and may attach hooks to commands: ``before`` does what the
runbook says happens between two commands (a newer appliance arrives, the state is lost), ``after``
checks what the prose says a command does. A hook names its command by a substring of it; a hook
that matches no command fails the test, so a runbook edited away from its scenario is noticed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNBOOKS = REPO / "docs" / "runbooks"

# The operator's absolute paths that a runbook may use; each is re-rooted under the test's directory.
ROOTED = ("/opt", "/srv", "/media", "/mnt", "/var/backups", "/var/log", "/root", "/path/to", "/etc/chiron")
_ROOTED = re.compile(r"(?<![\w./~-])(" + "|".join(re.escape(p) for p in ROOTED) + r")(?![\w.-])")
_FENCE = re.compile(r"^(\s*)(```+)\s*([\w-]*)\s*(.*)$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(.*?)\s*-->\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_EXIT = re.compile(r"^exit\s+(\d+(?:\s+or\s+\d+)*)\b")
# After substitution a command may name only paths under the test's directory, temporary files and these
# (read-only system places): a runbook path that is not re-rooted must never reach this machine's /var or /etc.
_SYSTEM = ("/usr/bin/", "/usr/lib/", "/bin/", "/dev/null", "/dev/stdin", "/usr/share/")
# A path: /a/b, or //a/b (the same to the kernel), but not the //host/... of a URL.
_ABSOLUTE = re.compile(r"(?:(?<![\w.~/-])/|(?<![\w.~/:-])//+)[\w.+-]+(?:/[\w.+-]*)*")


def _normal(path: str) -> str:
    """``path`` as the kernel resolves its name: /usr/bin/../../etc/x or //etc/x is not a system path."""
    return os.path.normpath("/" + path.lstrip("/"))


_HEREDOC = re.compile(r"(?<!<)<<-?(?!<)\s*(['\"]?)(\w+)\1")  # a here-document, not a <<< here-string


@dataclass(frozen=True)
class Command:
    """One logical command of a block: continuation lines joined, the trailing comment split off."""

    text: str
    comment: str
    line: int
    section: str
    exits: frozenset[int]
    prints: tuple[str, ...]

    def where(self, doc: Path) -> str:
        return f"{doc.relative_to(REPO)}:{self.line} ({self.section})"


@dataclass(frozen=True)
class Block:
    lang: str
    line: int
    section: str
    text: str
    not_run: str | None  # the reason, for a block marked <!-- not run: REASON -->

    def commands(self) -> list[Command]:
        return split_commands(self.text, self.line + 1, self.section)


def blocks(markdown: str, langs: tuple[str, ...] | None = ("sh",)) -> list[Block]:
    """The fenced blocks of ``langs`` (None: of any language) in a Markdown text, with the heading above."""
    out: list[Block] = []
    lines = markdown.splitlines()
    section, i = "", 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        heading = _HEADING.match(lines[i])
        if heading and not fence:
            section = heading[2]
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence[1], fence[2], fence[3]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(ticks):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if langs is None or lang in langs:
            out.append(Block(lang, i + 1, section, "\n".join(body), _not_run(lines, i)))
        i = j + 1
    return out


def _not_run(lines: list[str], fence: int) -> str | None:
    """The reason of a ``<!-- not run: REASON -->`` comment just above a fence (blank lines between)."""
    k = fence - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    match = _NOT_RUN.match(lines[k]) if k >= 0 else None
    if match is None:
        return None
    if not match[1]:
        raise ValueError(f"line {k + 1}: a <!-- not run: --> comment must give the reason")
    return match[1]


def split_commands(text: str, first_line: int, section: str) -> list[Command]:
    """Logical command lines: blank and comment lines skipped, ``\\`` continuations and here-documents joined."""
    out: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        raw = lines[i]
        if not raw.strip() or raw.lstrip().startswith("#"):
            i += 1
            continue
        parts = [raw]
        while parts[-1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            parts.append(lines[i])
        code, comment = split_comment(" ".join(p.rstrip().removesuffix("\\").strip() for p in parts))
        heredoc = _HEREDOC.search(code)
        if heredoc:  # the document follows, up to its terminator line, verbatim
            body = []
            while i + 1 < len(lines):
                i += 1
                body.append(lines[i])
                if lines[i].strip() == heredoc[2]:
                    break
            code = code + "\n" + "\n".join(body)
        exits = _EXIT.match(comment)
        out.append(
            Command(
                text=code,
                comment=comment,
                line=first_line + start,
                section=section,
                exits=frozenset(int(n) for n in re.split(r"\s+or\s+", exits[1])) if exits else frozenset({0}),
                prints=tuple(re.findall(r'"([^"]+)"', comment)),
            )
        )
        i += 1
    return out


def split_comment(line: str) -> tuple[str, str]:
    """(code, trailing comment without its '#'): a '#' starts a comment only outside quotes, after a blank."""
    quote, k = "", 0
    while k < len(line):
        ch = line[k]
        if ch == "\\" and quote != "'":
            k += 2  # an escaped character, quoted or not
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1] in " \t"):
            return line[:k].rstrip(), line[k + 1 :].strip()
        k += 1
    return line.rstrip(), ""


@dataclass
class Result:
    command: Command
    ran: str  # the command after substitution, as the shell ran it
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Hook:
    """Attach test code to the ``occurrence``-th command (1 = first) whose text contains ``match``."""

    match: str
    before: Callable[[Session], None] | None = None
    after: Callable[[Session, Result], None] | None = None
    occurrence: int = 1
    seen: int = 0


# Variables of the shell itself, never carried from one command to the next.
_SHELL_VARS = (
    "BASH*|FUNCNAME|GROUPS|DIRSTACK|PIPESTATUS|RANDOM|SRANDOM|SECONDS|LINENO|HISTCMD|EPOCH*|SHLVL|PPID|UID|"
    "EUID|OPTIND|OPTARG|OPTERR|_|__*|COMP_*|PWD|OLDPWD|SHELLOPTS|IFS|PS1|PS2|PS4|HOSTNAME|HOSTTYPE|MACHTYPE|OSTYPE"
)
_PRELUDE = f"""
__S=@STATE@
__chiron_save() {{
  __rc=$?
  pwd > "$__S/cwd"
  for __v in $(compgen -v); do
    case $__v in {_SHELL_VARS}) continue;; esac
    __d=$(declare -p "$__v" 2>/dev/null) || continue
    __f=${{__d#declare -}}; __f=${{__f%% *}}
    case $__f in *r*) continue;; esac
    printf '%s\\n' "$__d"
  done > "$__S/vars.new" && mv "$__S/vars.new" "$__S/vars"
  return $__rc
}}
cd "$(cat "$__S/cwd")"
. "$__S/vars"
trap __chiron_save EXIT
set -eo pipefail
"""


@dataclass
class Session:
    """One operator's shell session through a runbook, inside ``root`` (where /opt, /srv... live)."""

    doc: Path
    root: Path
    env: dict[str, str]
    bindings: dict[str, str] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = self.root / ".shell"
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "vars").write_text("")
        self.cd(self.root)

    def path(self, operator_path: str) -> Path:
        """Where an operator's absolute path (``/srv/appliances``) is in this test."""
        path = Path(self.rooted(operator_path))
        assert path.is_relative_to(self.root), f"{operator_path} is not under a re-rooted directory ({ROOTED})"
        return path

    def rooted(self, text: str) -> str:
        return _ROOTED.sub(lambda m: f"{self.root}{m[1]}", text)

    def cd(self, directory: Path) -> None:
        (self.state / "cwd").write_text(f"{directory}\n")

    @property
    def cwd(self) -> Path:
        return Path((self.state / "cwd").read_text().strip())

    def bind(self, placeholder: str, value: str | Path) -> None:
        """Replace ``placeholder`` (a whole word of a command) by ``value`` from now on."""
        self.bindings[placeholder] = str(value)

    def export(self, name: str, value: str) -> None:
        """Set an environment variable for the commands that follow (as if the operator exported it)."""
        with (self.state / "vars").open("a") as f:
            f.write(f"declare -x {name}={shlex.quote(value)}\n")

    def unset(self, name: str) -> None:
        with (self.state / "vars").open("a") as f:
            f.write(f"unset {name}\n")

    def substitute(self, text: str) -> str:
        """The operator's paths re-rooted, then every bound placeholder (a whole word) replaced, in one pass."""
        out = self.rooted(text)
        if not self.bindings:
            return out
        names = "|".join(re.escape(p) for p in sorted(self.bindings, key=len, reverse=True))
        return re.sub(rf"(?<!\w)({names})(?!\w)", lambda m: self.bindings[m[1]], out)

    def sh(self, text: str, exits: int = 0) -> Result:
        """Run a command the runbook does not show (to check what its prose says), in the same session."""
        result = self.run(Command(text, f"exit {exits}", 0, "(the test)", frozenset({exits}), ()))
        self.check(result)
        return result

    def run(self, command: Command) -> Result:
        ran = self.substitute(command.text)
        tmp = tempfile.gettempdir().rstrip("/") + "/"
        foreign = [
            path
            for path in map(_normal, _ABSOLUTE.findall(ran))
            if not (path + "/").startswith((f"{self.root}/", tmp)) and not path.startswith(_SYSTEM)
        ]
        assert not foreign, (
            f"{command.where(self.doc)}: `{command.text}` names {foreign[0]}, which is not re-rooted into the test's "
            f"directory: add its top directory to ROOTED in tests/runbook.py, or bind it in the scenario"
        )
        script = _PRELUDE.replace("@STATE@", shlex.quote(str(self.state))) + ran + "\n"
        proc = subprocess.run(
            ["bash", "-c", script], env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900
        )
        result = Result(command, ran, proc.returncode, proc.stdout, proc.stderr)
        self.log.append(f"$ {ran}\n{proc.stdout}{proc.stderr}[exit {proc.returncode}]")
        print(self.log[-1])  # pytest shows it with a failure
        self.results.append(result)
        return result

    def check(self, result: Result) -> None:
        """What the runbook says of the command: its exit code and the texts it prints, and no traceback."""
        command = result.command
        where = command.where(self.doc)
        tail = "\n".join(result.output.strip().splitlines()[-15:])
        assert result.code in command.exits, (
            f"{where}: `{result.ran}` exited {result.code}, the runbook expects exit "
            f"{' or '.join(map(str, sorted(command.exits)))}:\n{tail}"
        )
        for text in command.prints:
            assert text in result.output, f"{where}: `{result.ran}` did not print {text!r}:\n{tail}"
        assert "Traceback (most recent call last)" not in result.output, f"{where}: a traceback:\n{tail}"


def run_runbook(session: Session, hooks: list[Hook] | None = None, langs: tuple[str, ...] = ("sh",)) -> list[Result]:
    """Run every block of the runbook (but those marked not run), command by command, with the hooks."""
    hooks = hooks or []
    for block in blocks(session.doc.read_text(), langs):
        if block.not_run is not None:
            print(f"not run: {session.doc.name}:{block.line} ({block.section}): {block.not_run}")
    for command in commands(session.doc.read_text(), langs):
        mine = []
        for hook in hooks:
            if hook.match in command.text:
                hook.seen += 1
                if hook.seen == hook.occurrence:
                    mine.append(hook)
        for hook in mine:
            if hook.before is not None:
                hook.before(session)
        result = session.run(command)
        session.check(result)
        for hook in mine:
            if hook.after is not None:
                hook.after(session, result)
    missed = [h for h in hooks if h.seen < h.occurrence]
    assert not missed, "the runbook no longer has these commands; update the scenario in the test: " + ", ".join(
        f"{h.match!r} (occurrence {h.occurrence})" for h in missed
    )
    return session.results


def commands(markdown: str, langs: tuple[str, ...] = ("sh",)) -> Iterator[Command]:
    for block in blocks(markdown, langs):
        if block.not_run is None:
            yield from block.commands()


def operator_env(root: Path, home: Path, chiron_bin: Path, **extra: str) -> dict[str, str]:
    """The environment of the operator's shell: the venv's chiron first on PATH, a private home, none of
    the test run's chiron variables (a runbook sets what it needs, e.g. CHIRON_TOOL_WHEELS)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHIRON_", "PEX_", "SOURCE_DATE_EPOCH", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "OTEL_EXPORTER_OTLP_ENDPOINT")
    }
    env.update(HOME=str(home), PATH=f"{chiron_bin}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", **extra)
    return env
