"""A 3 GiB payload builds, runs and verifies under Python 3.11, and the payload is never extracted; the
appliance splits onto 1.2 GB media, a volume verifies alone, and the set is received back byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chiron.archive.reader import read_layout
from chiron.core.fs import sha256_file

from conftest import do_build
from helpers import ENV_311, write_spec

GIB = 1 << 30


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_three_gib_payload(tmp_path: Path, keys: Path, index, tool_wheels: Path) -> None:  # type: ignore[no-untyped-def]
    assert sys.version_info[:2] == (3, 11) or shutil.which("python3.11"), "needs Python 3.11"
    work = tmp_path / "big"
    work.mkdir()
    try:
        payload = work / "payload.bin"
        with payload.open("wb") as f:
            f.truncate(3 * GIB)  # sparse: reads as zeros, costs no disk until packed
            f.seek(3 * GIB - 5)
            f.write(b"tail!")
        spec = write_spec(
            work / "spec",
            keys=keys,
            index_url=index.url,
            requirements=["beta==1.0"],
            environments=ENV_311,
            extra=f'[[files]]\nsrc = "{payload}"\ndest = "data/payload.bin"\n',
        )
        out = work / "big.pex"
        do_build(spec, out, tool_wheels, work / "cache", epoch=None)
        payload.unlink()
        layout = read_layout(out)
        assert layout.size > 3 * GIB and layout.zip_offset > 3 * GIB
        member = layout.member("files/data/payload.bin")
        assert member is not None and member.length == 3 * GIB

        pex_root = work / "pex-root"
        env = dict(os.environ, PEX_ROOT=str(pex_root), PEX_PYTHON="python3.11")
        python = shutil.which("python3.11") or sys.executable
        help_run = subprocess.run([python, str(out), "--help"], env=env, capture_output=True, text=True, timeout=600)
        assert help_run.returncode == 0, help_run.stderr
        assert "verify" in help_run.stdout
        verify_run = subprocess.run(
            [str(out), "verify", "--root", str(keys / "1.root.json"), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert verify_run.returncode == 0, verify_run.stderr
        assert json.loads(verify_run.stdout)["ok"] is True  # one JSON line when piped
        # The tool was unpacked once (tens of MiB); the 3 GiB payload was neither extracted nor copied.
        assert _du(pex_root) < 200 * (1 << 20), _du(pex_root)
        assert _du(work) < 3 * GIB + 300 * (1 << 20)
        _split_verify_receive(out, work, keys / "1.root.json", env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _split_verify_receive(app: Path, work: Path, root: Path, env: dict[str, str]) -> None:
    """Offsets past 2 GiB through split, verify VOLUME and receive, with the appliance's own tool."""

    def chiron(*args: str) -> dict[str, object]:
        done = subprocess.run([str(app), *args, "--json"], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]

    made = chiron("split", str(app), "--size", "1200M", "-o", str(work / "vols"))
    vols = sorted((work / "vols").glob("*.chv"))
    assert len(vols) == 3 and made["sha256"] and made["size"] == app.stat().st_size
    last = chiron("verify", str(vols[-1]), "--root", str(root))  # its bytes lie past 2 GiB of the whole
    assert last["ok"] is True and last["volume"]["offset"] > 2 * GIB  # type: ignore[index]
    got = chiron("receive", str(work / "vols"), "--to", str(work / "in"), "--root", str(root))
    assert got["complete"] is True and got["volumes"] == {"count": 3, "received": [1, 2, 3], "missing": []}
    received = Path(str(got["output"]))
    assert received.stat().st_size == made["size"] and sha256_file(received) == made["sha256"]
