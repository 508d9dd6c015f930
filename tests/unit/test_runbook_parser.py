"""The runbook parser of the docs-as-tests harness (tests/runbook.py): what counts as a command, its
expected exit codes and output, blocks marked not run, and how operator paths and placeholders map."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook import RUNBOOKS, Session, blocks, commands, split_comment

MARKDOWN = """# Runbook

## 1. First

```sh
cd /srv/appliances                 # local copies
./chiron.pex install --prefix /opt/chiron \\
    --root-sha256 HEX              # exit 0: "installed"
python3 - <<'END'
print("# not a comment")
END
status    # exit 0 or 4: see below
cat <<< "here-string"
```

Output, not run:

```
installed NAME VERSION
```

- In a list:

  ```sh
  echo "a # b" 'c # d' # exit 3: "x" and "y"
  ```

<!-- not run: needs a second machine -->

```sh
ssh other-host
```
"""


def test_commands_are_logical_lines_with_their_expectations() -> None:
    got = list(commands(MARKDOWN))
    assert [c.text for c in got] == [
        "cd /srv/appliances",
        "./chiron.pex install --prefix /opt/chiron --root-sha256 HEX",
        "python3 - <<'END'\nprint(\"# not a comment\")\nEND",
        "status",
        'cat <<< "here-string"',
        "echo \"a # b\" 'c # d'",
    ]
    assert [sorted(c.exits) for c in got] == [[0], [0], [0], [0, 4], [0], [3]]
    assert got[1].prints == ("installed",) and got[5].prints == ("x", "y")
    assert got[1].line == 7 and got[1].section == "1. First" and got[5].section == "1. First"


def test_blocks_other_than_sh_and_blocks_marked_not_run() -> None:
    assert [b.lang for b in blocks(MARKDOWN, None)] == ["sh", "", "sh", "sh"]
    marked = blocks(MARKDOWN)[-1]
    assert marked.not_run == "needs a second machine" and marked.text == "ssh other-host"
    with pytest.raises(ValueError, match="must give the reason"):
        blocks("<!-- not run: -->\n```sh\nx\n```\n")


def test_a_hash_starts_a_comment_only_outside_quotes_after_a_blank() -> None:
    assert split_comment("echo a#b 'c # d' # e") == ("echo a#b 'c # d'", "e")
    assert split_comment('echo "x \\" # y" # z') == ('echo "x \\" # y"', "z")


def test_operator_paths_are_re_rooted_and_placeholders_bound(tmp_path: Path) -> None:
    s = Session(RUNBOOKS / "install-and-upgrade.md", tmp_path, {})
    s.bind("HEX", "abc")
    s.bind("N.root.json", "1.root.json")
    s.bind("N+1.root.json", "2.root.json")
    text = "cp /var/backups/x /root/y && tar -C /opt/chiron . --root-sha256 HEX HEXA /usr/bin/x keys/N+1.root.json"
    assert s.substitute(text) == (
        f"cp {tmp_path}/var/backups/x {tmp_path}/root/y && tar -C {tmp_path}/opt/chiron . --root-sha256 abc HEXA "
        "/usr/bin/x keys/2.root.json"
    )
    assert s.substitute("N.root.json oci://registry:5000/opt/x file2:/path/to/k.pem /optional") == (
        f"1.root.json oci://registry:5000/opt/x file2:{tmp_path}/path/to/k.pem /optional"
    )
    with pytest.raises(AssertionError):
        s.path("/usr/local/bin")


def test_a_path_that_is_not_re_rooted_is_never_run(tmp_path: Path) -> None:
    s = Session(RUNBOOKS / "install-and-upgrade.md", tmp_path, {})
    (command,) = commands("```sh\nrm -rf /var/lib/chiron\n```\n")
    with pytest.raises(AssertionError, match="/var/lib/chiron, which is not re-rooted"):
        s.run(command)
    # A system or test path that leads elsewhere is judged where it leads.
    for text in ("rm -rf /usr/bin/../../etc/cron.d/x", "cat //etc/shadow"):
        (command,) = commands(f"```sh\n{text}\n```\n")
        with pytest.raises(AssertionError, match="which is not re-rooted"):
            s.run(command)
