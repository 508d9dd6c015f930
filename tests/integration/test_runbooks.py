"""Docs as tests: every runbook (docs/runbooks/*.md) and the scheduling section of docs/mirror.md, run
from the Markdown itself against real local services (issue 21).

Each runbook has one scenario here. The scenario lays out what the runbook assumes the operator has
(the appliance on a medium, the allowed_signers file, a mirror store, the keys), binds the runbook's
placeholders, and runs every ```sh block, command by command, in one shell session with the venv's
`chiron` first on PATH (tests/runbook.py; the conventions are in docs/runbooks/README.md). Hooks do
what the runbook says happens between two commands (a newer appliance arrives, the state is lost) and
check what its prose says a command prints. A runbook without a scenario, a hook whose command is gone,
a command that exits other than the runbook says, or a claimed output that is not printed, fails.

Cost: the appliances are built once per session, cp311 only, from the session's cached tool zip (one
tool build for the whole session); pex unpacks the tool once into a shared home.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chiron.archive.reader import read_layout
from chiron.archive.volume import read_header
from chiron.sources.toolcache import key_file, secret_key
from chiron.trust import metadata as _trust

from conftest import do_build, image_spec, images_toml, start_registry
from helpers import LocalIndex, free_port, make_tls, make_wheel, write_spec
from runbook import RUNBOOKS, Hook, Result, Session, blocks, operator_env, run_runbook

VENV_CHIRON = Path(sys.executable).with_name("chiron")


# ---------------------------------------------------------------- shared parts


@pytest.fixture(scope="session")
def operator_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PATH entry holding only `chiron` (the venv's): the runbooks' `chiron`, nothing else of the venv."""
    directory = tmp_path_factory.mktemp("operator-bin")
    (directory / "chiron").symlink_to(VENV_CHIRON)
    return directory


@pytest.fixture(scope="session")
def operator_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for every runbook's shell: pex unpacks the (shared) tool there once (~/.cache/pex), and it
    holds this test process's tool-cache key (~/.local/state/chiron), so the tool zips tests/conftest.py
    seeds stores with are taken from the cache, not built again (~30 s each)."""
    home = tmp_path_factory.mktemp("operator-home")
    key, why = secret_key(key_file())
    assert key is not None, why
    state = home / ".local" / "state" / "chiron"
    state.mkdir(parents=True, mode=0o700)
    shutil.copy2(key_file(), state / key_file().name)
    return home


@pytest.fixture()
def new_session(tmp_path: Path, operator_bin: Path, operator_home: Path, session_cache: Path) -> Callable[..., Session]:
    def make(doc: str, **env: str) -> Session:
        root = tmp_path / "machine"
        root.mkdir(exist_ok=True)
        # The session's artifact cache: where a `chiron build` in a runbook finds the tool zip already built.
        extra = {"CHIRON_CACHE_DIR": str(session_cache), **env}
        session = Session(RUNBOOKS / doc, root, operator_env(root, operator_home, operator_bin, **extra))
        session.bind("/usr/local/bin/chiron", str(operator_bin / "chiron"))
        return session

    return make


def fingerprint(root_json: Path) -> str:
    return _trust.fingerprint(root_json.read_bytes())


def deliver(appliance: Path, directory: Path, name: str | None = None, *, mode: int = 0o755) -> Path:
    """Put an appliance and its detached signature into ``directory`` (as a medium or a copy brings them)."""
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / (name or appliance.name)
    shutil.copyfile(appliance, dest)
    dest.chmod(mode)
    shutil.copyfile(f"{appliance}.sig", f"{dest}.sig")
    return dest


def shape(example: str) -> re.Pattern[str]:
    """A regex for a runbook's example output line: `...` is anything, an upper-case word a value."""
    out = []
    for token in re.split(r"(\.\.\.|\b[A-Z][A-Z0-9]*\b)", example):
        if token == "...":
            out.append(".*?")
        elif re.fullmatch(r"[A-Z][A-Z0-9]*", token):
            out.append(r"[^\s,()]+")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))


def claim(session: Session, example: str, result: Result) -> None:
    """The runbook shows ``example`` as what a command prints: it must, word for word but its values."""
    said = " ".join(session.doc.read_text().split())  # as the text reads, whatever its line breaks
    assert " ".join(example.split()) in said, f"{session.doc.name} no longer says {example!r}: update the test"
    pattern = shape(session.rooted(example))
    assert pattern.search(result.output), f"{session.doc.name} says {example!r}; the command printed:\n{result.output}"


def exit_row(session: Session, code: int, message: str, result: Result) -> None:
    """The runbook's table of exit codes has a row ``| code | ... `message` ... |``, and the command exited
    so and printed the message (an upper-case word in it standing for a value)."""
    rows = [line for line in session.doc.read_text().splitlines() if line.startswith(f"| {code} |")]
    assert any(f"`{message}`" in row for row in rows), f"{session.doc.name}: no exit-{code} row names `{message}`"
    assert result.code == code, result.output
    assert shape(session.rooted(message)).search(result.output), result.output


def assert_ready(result: Result) -> None:
    """doctor checked everything and found nothing to fix: every check ok, then `ready`."""
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "ready" and all(line.startswith("ok ") for line in lines[:-1]), result.stdout


# ---------------------------------------------------------------- appliances (built once per session)


@pytest.fixture(scope="session")
def image_series(
    registry: str,
    keys: Path,
    index: LocalIndex,
    tool_wheels: Path,
    session_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Path]:
    """demo 1.0.0, 1.1.0, 1.2.0 (beta 1.0, 1.1, 1.1), each carrying the two test images, signed in that
    order by the session's keys: what a host is given over time."""
    base = tmp_path_factory.mktemp("series")
    refs = [f"{registry}/busybox:1", f"{registry}/app:1"]
    epoch = int(time.time()) - 3600
    out = []
    for n, (version, beta) in enumerate((("1.0.0", "1.0"), ("1.1.0", "1.1"), ("1.2.0", "1.1"))):
        spec = image_spec(base / f"s{n}", keys, index.url, images_toml(refs), name="demo", version=version)
        spec.write_text(spec.read_text().replace('"beta==1.0"', f'"beta=={beta}"'))
        out.append(
            do_build(spec, base / f"demo-{version}.pex", tool_wheels, session_cache, epoch=epoch + 60 * n).output
        )
    return out


# ---------------------------------------------------------------- every runbook has a scenario

SCENARIOS = {
    "verify-on-air-gapped-host.md": "test_verify_on_an_air_gapped_host",
    "install-and-upgrade.md": "test_install_upgrade_and_restore_an_old_state_backup",
    "mirror-refresh.md": "test_mirror_refresh",
    "disaster-recovery.md": "test_disaster_recovery",
    "compromised-key.md": "test_compromised_targets_key",
    "fleet-through-registry.md": "test_fleet_through_the_enclave_registry",
    "application-with-compose.md": "test_application_with_compose",
    "media-and-diodes.md": "test_media_and_diodes",
}


@pytest.mark.parametrize("doc", sorted(p.name for p in RUNBOOKS.glob("*.md") if p.name != "README.md"))
def test_every_runbook_has_a_scenario(doc: str) -> None:
    assert doc in SCENARIOS, (
        f"docs/runbooks/{doc} has no scenario in tests/integration/test_runbooks.py: every runbook is run "
        "from its Markdown (docs/runbooks/README.md says how to add one)"
    )
    assert SCENARIOS[doc] in globals(), SCENARIOS[doc]
    # A shell block fenced otherwise than ```sh would silently not run.
    shells = [b for b in blocks((RUNBOOKS / doc).read_text(), None) if b.lang in ("bash", "shell", "console", "zsh")]
    assert not shells, f"docs/runbooks/{doc}:{shells[0].line}: fence shell commands as ```sh (they are run)"


# ---------------------------------------------------------------- verify-on-air-gapped-host.md


def test_verify_on_an_air_gapped_host(new_session, image_series: list[Path], keys: Path, operator_home: Path) -> None:  # type: ignore[no-untyped-def]
    s = new_session("verify-on-air-gapped-host.md")
    deliver(image_series[0], s.path("/media/usb"), "chiron.pex", mode=0o644)  # a medium need not keep modes
    s.path("/srv/appliances").mkdir(parents=True)
    allowed = s.path("/path/to/allowed_signers")
    allowed.parent.mkdir(parents=True)
    shutil.copyfile(keys / "allowed_signers", allowed)
    s.bind("<ROOT-FINGERPRINT>", fingerprint(keys / "1.root.json"))

    def signature_good(s: Session, r: Result) -> None:
        claim(s, 'Good "chiron-appliance" signature for chiron with ED25519 key SHA256:...', r)

    def verified(s: Session, r: Result) -> None:
        claim(
            s,
            "verified /srv/appliances/chiron.pex: NAME VERSION, N signed targets, B bytes hashed, every byte "
            "accounted for (anchor: --root-sha256)",
            r,
        )
        # "On first run pex unpacks the tool (not the payload) into ~/.cache/pex."
        assert (operator_home / ".cache" / "pex").is_dir() and not (operator_home / ".pex").exists()

    def damaged_copies(s: Session, r: Result) -> None:
        # The damaged copies of the section's table, as operators see them: one cut short cannot run
        # ("a Python SyntaxError ... and exits 1") and another chiron names it; one with bytes appended runs.
        good = s.cwd / "chiron.pex"
        short, longer = s.cwd / "short.pex", s.cwd / "longer.pex"
        short.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        longer.write_bytes(good.read_bytes() + b"\n# appended\n")
        for copy in (short, longer):
            copy.chmod(0o755)
        cut = s.sh("./short.pex verify --root-sha256 <ROOT-FINGERPRINT>", exits=1)
        assert "SyntaxError" in cut.stderr and "chiron:" not in cut.output, cut.output
        truncated = "layout: no zip end record at the end of the file: the copy is truncated, or bytes were appended"
        claim(s, truncated, s.sh("chiron verify short.pex --root-sha256 <ROOT-FINGERPRINT>", exits=1))
        claim(
            s,
            "chiron: verification FAILED for PATH",
            s.sh("./longer.pex verify --root-sha256 <ROOT-FINGERPRINT>", exits=1),
        )
        claim(s, truncated, s.results[-1])
        short.unlink()
        longer.unlink()
        # "a fingerprint that is mistyped": exit 1 naming it; "not 64 hex digits": bad usage, exit 2.
        other = s.sh(f"./chiron.pex verify --root-sha256 {'0' * 64}", exits=1)
        claim(s, "root: no root metadata in the archive has sha256 ...", other)
        s.sh("./chiron.pex verify --root-sha256 1234", exits=2)

    def record(s: Session, r: Result) -> None:
        report = json.loads((s.cwd / "chiron.pex.verify.json").read_text())
        assert report["schema"] == "chiron.verify/1" and report["ok"] and not report["warnings"]

    def inspected(s: Session, r: Result) -> None:
        assert f"root fingerprint (sha256 of 1.root.json): {fingerprint(keys / '1.root.json')}" in r.stdout
        assert re.search(r"beta +1\.0 ", r.stdout) and "cp311: Python 3.11" in r.stdout

    run_runbook(
        s,
        [
            Hook("ssh-keygen -Y verify", after=signature_good),
            Hook("./chiron.pex verify --root-sha256", after=verified),
            Hook("./chiron.pex verify --root-sha256", after=damaged_copies),
            Hook("--json > chiron.pex.verify.json", after=record),
            Hook("./chiron.pex inspect", after=inspected),
        ],
    )
    assert (s.cwd / "chiron.pex.sha256").read_text().split()[0] == _sha256(image_series[0])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=True)


# ---------------------------------------------------------------- install-and-upgrade.md


def test_install_upgrade_and_restore_an_old_state_backup(  # type: ignore[no-untyped-def]
    new_session, image_series: list[Path], keys: Path, registry: str
) -> None:
    """The whole runbook on one host: install (images loaded), back up the state, upgrade, upgrade from
    a delta, roll back, then lose the state and restore the backup taken before all that (section 7)."""
    s = new_session("install-and-upgrade.md")
    appliances = s.path("/srv/appliances")
    deliver(image_series[0], appliances, "chiron.pex")
    allowed = s.path("/path/to/allowed_signers")
    allowed.parent.mkdir(parents=True)
    shutil.copyfile(keys / "allowed_signers", allowed)
    for directory in ("/var/backups", "/root"):
        s.path(directory).mkdir(parents=True)
    s.bind("<ROOT-FINGERPRINT>", fingerprint(keys / "1.root.json"))
    prefix = s.path("/opt/chiron")
    refs = [f"{registry}/busybox:1", f"{registry}/app:1"]
    releases: dict[str, str] = {}  # version -> release id, as the host printed them

    def release_of(text: str) -> str:
        match = re.search(r"\(release (demo-[\w.+-]+)", text)
        assert match, text
        return match[1]

    def installed(s: Session, r: Result) -> None:
        claim(s, "installed NAME VERSION (release ID, environment ENV)", r)
        claim(s, "notice: loaded N image(s) into the Docker Engine: REF, ...", r)
        assert all(ref in r.output for ref in refs), r.output
        releases["1.0.0"] = release_of(r.stdout)
        # Rows of the table of section 5, on this host and an empty prefix.
        again = s.sh("./chiron.pex install --prefix /opt/chiron --root-sha256 <ROOT-FINGERPRINT>", exits=4)
        exit_row(s, 4, "already has release ... installed", again)
        empty = s.sh("./chiron.pex status --prefix /opt/nothing-here", exits=2)
        exit_row(s, 2, "nothing is installed here", empty)

    def first_status(s: Session, r: Result) -> None:
        assert f"current: demo 1.0.0 (release {releases['1.0.0']}" in r.stdout
        assert f"root fingerprint: {fingerprint(keys / '1.root.json')}" in r.stdout

    def images_listed(s: Session, r: Result) -> None:
        for ref in refs:
            repository, tag = ref.rsplit(":", 1)
            assert re.search(rf"^{re.escape(repository)} +{tag} ", r.stdout, re.M), r.stdout

    def images_loaded(s: Session, r: Result) -> None:
        claim(s, "loaded N image(s) into the Docker Engine: REF, ...", r)

    def backed_up(s: Session, r: Result) -> None:
        (backup,) = s.path("/var/backups").glob("chiron-state-*.tgz")
        assert backup.stat().st_mode & 0o777 == 0o600  # "only root may read it"

    def new_arrives(s: Session) -> None:
        deliver(image_series[1], appliances, "new.pex")

    def upgraded(s: Session, r: Result) -> None:
        claim(s, "upgraded to NAME VERSION (...)", r)
        claim(s, "previous release kept: ID", r)
        releases["1.1.0"] = release_of(r.stdout)
        assert f"previous release kept: {releases['1.0.0']}" in r.stdout
        # "`./new.pex upgrade --prefix /opt/chiron` hands over to /opt/chiron/bin/chiron by itself and prints
        # a notice saying so", and "Running the same upgrade again changes nothing: it exits 0, loads no
        # images, and the audit log records noop."
        again = s.sh("./new.pex upgrade --prefix /opt/chiron")
        assert "notice:" in again.output and "/opt/chiron/bin/chiron" in s.rooted(again.output), again.output
        assert "loaded" not in again.output
        last = json.loads((prefix / "state" / "audit.jsonl").read_text().splitlines()[-1])
        assert last["op"] == "upgrade" and last["result"] == "noop", last
        older = s.sh("/opt/chiron/bin/chiron upgrade /srv/appliances/chiron.pex --prefix /opt/chiron", exits=4)
        exit_row(s, 4, "metadata: rollback refused", older)

    def delta_made(s: Session) -> None:
        # On the mirror host: a delta of the next appliance against the inventory carried out.
        _run(VENV_CHIRON, "delta", s.cwd / "inventory.json", image_series[2], "-o", appliances / "demo-1.0.0-N.delta")

    def upgraded_from_delta(s: Session, r: Result) -> None:
        assert "upgraded to demo 1.2.0" in r.stdout, r.output
        releases["1.2.0"] = release_of(r.stdout)

    def rolled_back(s: Session, r: Result) -> None:
        claim(s, "rolled back to", r)
        assert (prefix / "current").resolve().name == releases["1.1.0"]

    def which_backup(s: Session) -> None:
        (backup,) = s.path("/var/backups").glob("chiron-state-*.tgz")
        s.bind("YYYYMMDDTHHMMSSZ", backup.name.removeprefix("chiron-state-").removesuffix(".tgz"))

    def disagrees(s: Session, r: Result) -> None:
        # The backup was taken after the install; two upgrades and a rollback happened since.
        exit_row(s, 4, "the state disagrees with the disk (restored from an older backup?)", r)
        # "Before step 5 it [audit verify] exits 1 with `entries after N were lost: ...`."
        lost = s.sh("/opt/chiron/bin/chiron audit verify --prefix /opt/chiron", exits=1)
        claim(s, "entries after N were lost: /opt/chiron/audit.head records M (state restored from a backup?)", lost)

    def adopted(s: Session, r: Result) -> None:
        claim(s, "adopted the live release ID", r)
        assert releases["1.1.0"] in r.stdout

    def intact_after_recover(s: Session, r: Result) -> None:
        assert "lost" in r.output, r.output  # the loss is listed as a notice
        recover = [json.loads(line) for line in (prefix / "state" / "audit.jsonl").read_text().splitlines()][-1]
        assert recover["op"] == "recover" and recover.get("lost_entries"), recover

    def final_status(s: Session, r: Result) -> None:
        assert f"current: demo 1.1.0 (release {releases['1.1.0']}" in r.stdout, r.stdout
        assert releases["1.2.0"] in r.output  # the release installed after the backup, which state.json does not know
        # The backup's current release (1.0.0) is gone from disk: it is not named previous, and rollback
        # says there is none (not a dangling switch); 1.2.0, unknown to the backup, is not trusted for one.
        assert "\nprevious: -\n" in r.stdout, r.stdout
        # "If it warns about a release state.json does not know ..., remove it: rm -rf /opt/chiron/releases/ID"
        s.bind("ID", releases["1.2.0"])
        s.sh("rm -rf /opt/chiron/releases/ID")
        assert "does not know" not in s.sh("/opt/chiron/bin/chiron status --prefix /opt/chiron").output
        back = s.sh("/opt/chiron/bin/chiron rollback --prefix /opt/chiron", exits=4)
        exit_row(s, 4, "no previous release", back)

    run_runbook(
        s,
        [
            Hook("ssh-keygen -Y verify", after=lambda s, r: claim(s, 'Good "chiron-appliance" signature', r)),
            Hook("./chiron.pex doctor", after=lambda s, r: assert_ready(r)),
            Hook("./chiron.pex install", after=installed),
            Hook("/opt/chiron/bin/chiron status", after=first_status),
            Hook("docker images", after=images_listed),
            Hook("images load --prefix", after=images_loaded),
            Hook("tar -C /opt/chiron -czf", after=backed_up),
            Hook("upgrade /srv/appliances/new.pex", before=new_arrives, after=upgraded),
            Hook("upgrade /srv/appliances/demo-1.0.0-N.delta", before=delta_made, after=upgraded_from_delta),
            Hook("chiron rollback", after=rolled_back),
            Hook("rm -rf /opt/chiron/state", before=which_backup),
            Hook("/opt/chiron/bin/chiron status", occurrence=3, after=disagrees),
            Hook("/opt/chiron/bin/chiron recover", after=adopted),
            Hook("audit verify", occurrence=2, after=intact_after_recover),
            Hook("/opt/chiron/bin/chiron status", occurrence=4, after=final_status),
        ],
    )


# ---------------------------------------------------------------- mirror-refresh.md


def keys_dir_spec(directory: Path, index_url: str) -> Path:
    """A cp311 spec whose keys are found through CHIRON_KEYS_DIR, as the default bundle's are."""
    return write_spec(directory, keys=Path("${CHIRON_KEYS_DIR}"), index_url=index_url, requirements=["alpha>=1.0"])


def test_mirror_refresh(  # type: ignore[no-untyped-def]
    new_session,
    keys: Path,
    upstream: LocalIndex,
    tool_wheels: Path,
    session_cache: Path,
    tool_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Set up a mirror host from an appliance (section 0), make a store from a spec (1), review, verify
    and carry a change as a delta to a host that upgrades from it (3), and force a new version (5)."""
    s = new_session("mirror-refresh.md")
    shutil.copytree(keys, s.path("/srv/chiron/keys"))
    spec = keys_dir_spec(s.path("/srv/spec"), upstream.url)
    monkeypatch.setenv("CHIRON_KEYS_DIR", str(keys))
    built = do_build(spec, s.root / "dist" / "chiron.pex", tool_wheels, session_cache, epoch=int(time.time()) - 600)
    deliver(built.output, s.path("/srv/chiron"))
    s.cd(s.path("/srv/chiron"))
    s.path("/srv/chiron/tool-wheels").symlink_to(tool_wheels)
    allowed = s.path("/path/to/allowed_signers")
    allowed.parent.mkdir(parents=True)
    shutil.copyfile(keys / "allowed_signers", allowed)
    s.bind("HEX", fingerprint(keys / "1.root.json"))
    store = s.path("/srv/chiron/store")

    def initialised(s: Session, r: Result) -> None:
        assert (store / "state.json").is_file() and (store / "spec" / "appliance.toml").is_file()

    def reused(s: Session, r: Result) -> None:
        assert "the tool of version" in r.output and "is reused" in r.output, r.output  # no tool wheels needed

    def new_store(s: Session) -> None:
        # Section 1 is the other way to start: a store made from the spec (the one of section 0 moves aside).
        store.rename(store.with_name("store-from-appliance"))
        shutil.copytree(tool_cache, store / "artifacts" / "tool")  # the tool zip built from these wheels

    def first_run(s: Session, r: Result) -> None:
        assert f"root fingerprint: {fingerprint(keys / '1.root.json')}" in r.stdout, r.stdout
        assert (store / "state.json").is_file()

    def status(s: Session, r: Result) -> None:
        assert f"root fingerprint: {fingerprint(keys / '1.root.json')}" in r.stdout, r.stdout

    def a_change(s: Session) -> None:
        # A scheduled run finds beta 1.1 upstream; a host runs the appliance before it.
        (running,) = (store / "appliances").glob("*.pex")
        make_wheel(upstream.directory, "beta", "1.1")
        changed = s.sh("chiron mirror refresh --store /srv/chiron/store")
        claim(s, "built STORE/appliances/NAME-VERSION-N.pex (...)", changed)
        new = Path(changed.stdout.split()[1])
        assert new.parent == store / "appliances" and new != running
        s.bind("NEW.pex", new)
        s.bind("PREVIOUS.pex", running)
        s.bind("RUNNING.pex", running)
        s.sh(f"chiron install {running} --prefix /opt/chiron --root-sha256 HEX")

    def changelog(s: Session, r: Result) -> None:
        assert re.search(r"beta\s+1\.0\s*->\s*1\.1|beta 1\.0 -> 1\.1|beta.*1\.0.*1\.1", r.output), r.output

    def upgraded(s: Session, r: Result) -> None:
        assert "upgraded to demo 1.0.0+" in r.stdout, r.output
        python = s.path("/opt/chiron/current/venv/bin/python")
        assert _run(python, "-c", "import beta; print(beta.__version__)").stdout.strip() == "1.1"

    def forced(s: Session, r: Result) -> None:
        assert r.stdout.startswith("built "), r.output

    run_runbook(
        s,
        [
            Hook("./chiron.pex mirror init", after=initialised),
            Hook("./chiron.pex mirror refresh", after=reused),
            Hook("chiron mirror refresh /srv/spec/appliance.toml", before=new_store, after=first_run),
            Hook("chiron mirror status", after=status),
            Hook("chiron diff PREVIOUS.pex NEW.pex", before=a_change, after=changelog),
            Hook("upgrade NEW.delta", after=upgraded),
            Hook("--force", after=forced),
        ],
    )


# ---------------------------------------------------------------- disaster-recovery.md


def test_disaster_recovery(  # type: ignore[no-untyped-def]
    new_session, keys: Path, upstream: LocalIndex, tool_wheels: Path, session_cache: Path
) -> None:
    """Rebuild byte for byte (section 1), build the next release from the last appliance (2), restore a
    mirror store from it with and without --spec and refresh on (3), and replace a host (4)."""
    s = new_session("disaster-recovery.md")
    work = s.root / "work"  # the build host's checkout: bundle/ (the spec), build/dev-keys, dist/
    shutil.copytree(keys, work / "build" / "dev-keys")
    (work / "build" / "tool-wheels").symlink_to(tool_wheels)
    spec = write_spec(
        work / "bundle",
        keys=Path("${CHIRON_KEYS_DIR:-../build/dev-keys}"),  # as bundle/appliance.toml names them
        index_url=upstream.url,
        requirements=["alpha>=1.0"],
    )
    last = do_build(spec, work / "dist" / "chiron.pex", tool_wheels, session_cache, epoch=int(time.time()) - 600)
    shutil.copyfile(last.output, work / "last.pex")
    shutil.copyfile(f"{last.output}.sig", work / "last.pex.sig")
    s.cd(work)
    s.bind("HEX", fingerprint(keys / "1.root.json"))
    store = s.path("/srv/chiron/store")
    metadata_version = _json(VENV_CHIRON, "verify", last.output, "--root", keys / "1.root.json")["roles"]["targets"][
        "version"
    ]

    def identical(s: Session, r: Result) -> None:
        assert "byte-identical" in r.output or "identical" in r.output, r.output

    def extracted(s: Session, r: Result) -> None:
        assert (work / "recovered" / "spec" / "appliance.toml").read_bytes() == spec.read_bytes()

    original = spec.read_text()

    def raise_version(s: Session) -> None:
        # "Raise [appliance].version in bundle/appliance.toml."
        spec.write_text(original.replace('version = "1.0.0"', 'version = "1.1.0"', 1))

    def spec_of_the_store(s: Session) -> None:
        # Section 3 is another disaster: the mirror's spec (in version control) is the one last.pex was made from.
        spec.write_text(original)

    def next_built(s: Session, r: Result) -> None:
        report = _json(VENV_CHIRON, "verify", work / "dist" / "next.pex", "--root", keys / "1.root.json")
        assert report["ok"] and report["appliance"]["version"] == "1.1.0"
        assert report["roles"]["targets"]["version"] > metadata_version

    def restored(s: Session, r: Result) -> None:
        assert (store / "state.json").is_file() and f"metadata version {metadata_version}" in r.output, r.output

    def no_op(s: Session, r: Result) -> None:
        assert r.stdout.startswith("up to date"), r.output
        assert "the tool of version" in r.output and "is reused" in r.output  # "It needs no tool wheels"

    def something_new(s: Session) -> None:
        make_wheel(upstream.directory, "beta", "1.1")

    def next_version(s: Session, r: Result) -> None:
        assert f"metadata version {metadata_version + 1}," in r.stdout, r.output  # "version N+1"

    def fresh_host(s: Session) -> None:
        # Without --spec: on another new mirror host, where the spec was kept in /srv/spec (built from there).
        store.rename(store.with_name("store-with-spec"))
        shutil.copytree(work / "bundle", s.path("/srv/spec"))
        shutil.copytree(keys, s.path("/srv/build/dev-keys"))

    def restored_without_spec(s: Session, r: Result) -> None:
        assert (store / "spec" / "appliance.toml").is_file(), r.output

    def latest_delivered(s: Session) -> None:
        # A host is replaced: it gets the newest appliance of the store (the one restored with --spec).
        newest = max((store.with_name("store-with-spec") / "appliances").glob("*.pex"))
        deliver(newest, work, "chiron.pex")
        # and the old host's disk survived, holding its audit log
        old = s.root / "old-host"
        s.sh(f"chiron install last.pex --prefix {old} --root-sha256 HEX")
        s.bind("OLD", old)

    def replaced(s: Session, r: Result) -> None:
        assert f"installed demo 1.0.0+{metadata_version + 1}" in r.stdout, r.output

    run_runbook(
        s,
        [
            Hook("--check", after=identical),
            Hook("--check --online", after=identical),
            Hook("chiron extract last.pex", after=extracted),
            Hook("chiron build bundle/appliance.toml", before=raise_version, after=next_built),
            Hook("--spec bundle/appliance.toml", before=spec_of_the_store, after=restored),
            Hook("chiron mirror refresh --store /srv/chiron/store", after=no_op),
            Hook(
                "chiron mirror refresh --store /srv/chiron/store",
                occurrence=2,
                before=something_new,
                after=next_version,
            ),
            Hook("--base /srv/spec", before=fresh_host, after=restored_without_spec),
            Hook("./chiron.pex verify", before=latest_delivered),
            Hook("./chiron.pex install", after=replaced),
        ],
    )


def _json(*argv: str | Path) -> dict:  # type: ignore[type-arg]
    return json.loads(_run(*argv, "--json").stdout)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- compromised-key.md


def test_compromised_targets_key(  # type: ignore[no-untyped-def]
    new_session, keys: Path, upstream: LocalIndex, tool_wheels: Path, seeded
) -> None:
    """A store-managed appliance whose targets key leaks: rotate it (section 1), point the spec at the
    chain and the new key (2), ship it from the store to a host (3), rotate a root key (4), check (6)."""
    from chiron.engines import mirror

    s = new_session("compromised-key.md")
    offline = s.path("/srv/spec")  # the machine that holds the root directory: keys/root, beside the spec
    root_dir = offline / "keys" / "root"
    shutil.copytree(keys, root_dir)  # development keys: 1.root.json among the .pem files
    spec = write_spec(offline, keys=Path("keys/root"), index_url=upstream.url, requirements=["alpha>=1.0"])
    store = seeded(s.path("/srv/chiron/store"))
    first = mirror.refresh(mirror.RefreshOptions(store=store, spec=spec, tool_wheels=tool_wheels, show_progress=False))
    assert first.appliance is not None
    suspect = first.appliance  # signed with the old chain and the old targets key
    s.cd(offline)
    s.bind("HEX", fingerprint(keys / "1.root.json"))
    s.sh(f"chiron install {first.appliance} --prefix /opt/chiron --root-sha256 HEX")
    for name in ("new-targets", "new-holder"):  # the new keys' holders send their public halves (keys.md)
        s.sh(
            f"openssl genpkey -algorithm ed25519 -out {name}.pem && openssl pkey -in {name}.pem -pubout -out {name}.pub"
        )
    holder = s.path("/path/to/holder.pem")
    holder.parent.mkdir(parents=True)
    shutil.copyfile(keys / "root.pem", holder)
    s.bind("N.root.json", "1.root.json")
    s.bind("N+1.root.json", "2.root.json")
    root_v1 = json.loads((root_dir / "1.root.json").read_text())["signed"]
    old_targets = root_v1["roles"]["targets"]["keyids"]
    s.bind("STOLEN_KEYID", root_v1["roles"]["root"]["keyids"][0])
    newest: dict[str, str] = {}

    def keyids_listed(s: Session, r: Result) -> None:
        assert r.stdout.strip() == repr(old_targets), r.stdout
        s.bind("OLD_KEYID", old_targets[0])

    def rotated(s: Session, r: Result) -> None:
        assert (root_dir / "2.root.json").is_file()

    def point_the_spec(s: Session) -> None:
        # Section 2, step 2 first (the new key's URI), to see what step 1 warns of: trust.root still names
        # one file, which does not list the new key.
        text = spec.read_text().replace("file2:keys/root/targets.pem", "file2:new-targets.pem")
        spec.write_text(text)
        refused = s.sh("chiron mirror refresh /srv/spec/appliance.toml --store /srv/chiron/store --force", exits=2)
        assert "is not a targets key of the root metadata (root v1" in refused.output, refused.output
        assert "trust.root must name the DIRECTORY" in refused.output, refused.output
        # Step 1: trust.root names the directory.
        spec.write_text(text.replace('root = "keys/root/1.root.json"', 'root = "keys/root"'))

    def shipped(s: Session, r: Result) -> None:
        match = re.search(r"^newest root \(version 2\): ([0-9a-f]{64})$", r.stdout, re.M)
        assert match, r.output
        newest["sha256"] = match[1]
        appliance = Path(r.stdout.split()[1])
        deliver(appliance, s.path("/srv/appliances"), "new.pex")
        deliver(appliance, offline, "new.pex")
        deliver(suspect, offline, "suspect.pex")

    def published(s: Session, r: Result) -> None:
        assert r.stdout.split()[0] == newest["sha256"] == _sha256(root_dir / "2.root.json")

    def host_follows(s: Session, r: Result) -> None:
        assert re.search(r"^trusted root +v2 ", r.stdout, re.M), r.stdout

    def refused(s: Session, r: Result) -> None:
        assert "signature check failed" in r.output, r.output

    run_runbook(
        s,
        [
            Hook("python3 -c", after=keyids_listed),
            Hook("keys rotate targets", after=rotated),
            Hook("chiron mirror refresh /srv/spec/appliance.toml", before=point_the_spec, after=shipped),
            Hook("sha256sum", after=published),
            Hook("/opt/chiron/bin/chiron status", after=host_follows),
            Hook("chiron verify suspect.pex", after=refused),
        ],
    )


# ---------------------------------------------------------------- fleet-through-registry.md


def test_fleet_through_the_enclave_registry(  # type: ignore[no-untyped-def]
    new_session, image_series: list[Path], keys: Path, tmp_path: Path
) -> None:
    """Publish to a registry with TLS (a site CA) and credentials, check it with skopeo, install a host
    from it, move the tag (step 1 again with the next file) and upgrade the host from the tag."""
    from dataclasses import replace

    if shutil.which("htpasswd") is None:
        pytest.skip("NO htpasswd: tests/provision.py installs apache2-utils")
    ca, cert, key = make_tls(tmp_path / "tls")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(_run("htpasswd", "-Bbn", "chiron", "s3cret").stdout.strip() + "\n")
    registry = start_registry(tmp_path / "registry", htpasswd, (cert, key))
    try:
        s = new_session("fleet-through-registry.md")
        work = s.root / "station"  # where the appliance enters the enclave
        deliver(image_series[1], work, "demo-1.1.0.pex")
        deliver(image_series[2], work, "demo-1.2.0.pex")
        shutil.copyfile(keys / "allowed_signers", work / "allowed_signers")
        shutil.copyfile(ca, work / "site-ca.pem")
        token = base64.b64encode(b"chiron:s3cret").decode()
        auth = json.dumps({"auths": {registry.address: {"auth": token}}})
        (work / "publisher-auth.json").write_text(auth)
        hosts_auth = s.root / "host-auth.json"  # the hosts' pull credentials, found at $REGISTRY_AUTH_FILE
        hosts_auth.write_text(auth)
        hosts_auth.chmod(0o600)
        s.export("REGISTRY_AUTH_FILE", str(hosts_auth))
        s.cd(work)
        s.bind("registry.enclave:5000", registry.address)
        s.bind("HEX", fingerprint(keys / "1.root.json"))
        step1 = blocks(s.doc.read_text())[0].commands()

        def published(s: Session, r: Result) -> None:
            assert "published demo 1.1.0" in r.stdout, r.output

        def site_ca_trusted(s: Session) -> None:
            # skopeo has no --ca-file: the site CA is in the system's trust store, here through the variable
            # Go reads for it.
            s.export("SSL_CERT_FILE", str(work / "site-ca.pem"))

        def inspected(s: Session, r: Result) -> None:
            s.unset("SSL_CERT_FILE")
            assert '"application/vnd.chiron.appliance.v1"' in r.stdout and '"1.1.0"' in r.stdout, r.stdout

        def installed(s: Session, r: Result) -> None:
            assert "installed demo 1.1.0" in r.stdout, r.output

        def tag_moved(s: Session) -> None:
            # "Move the tag (step 1 with the new file)"
            for command in step1:
                s.check(s.run(replace(command, text=command.text.replace("demo-1.1.0", "demo-1.2.0"))))

        def upgraded(s: Session, r: Result) -> None:
            assert "upgraded to demo 1.2.0" in r.stdout, r.output

        run_runbook(
            s,
            [
                Hook("chiron publish", after=published),
                Hook("skopeo inspect", before=site_ca_trusted, after=inspected),
                Hook("chiron install oci://", after=installed),
                Hook("chiron upgrade oci://", before=tag_moved, after=upgraded),
            ],
        )
    finally:
        registry.stop()


# ---------------------------------------------------------------- docs/mirror.md, "Scheduling"


def scheduling_section() -> str:
    text = (RUNBOOKS.parent / "mirror.md").read_text()
    start = text.index("\n## Scheduling\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def systemd_service(section: str) -> dict[str, list[str]]:
    """The directives of the service unit (the ```ini block with a [Service] section): name -> values."""
    (unit,) = [b for b in blocks(section, ("ini",)) if "[Service]" in b.text]
    directives: dict[str, list[str]] = {}
    for line in unit.text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            name, _, value = line.partition("=")
            directives.setdefault(name.strip(), []).append(value.strip())
    return directives


def test_mirror_scheduling_runs_as_printed(  # type: ignore[no-untyped-def]
    new_session, keys: Path, upstream: LocalIndex, tool_wheels: Path, seeded, operator_home: Path
) -> None:
    """The systemd unit and the cron line of docs/mirror.md, run literally against a store.

    systemd itself cannot run here: the unit's Environment= and ExecStart= lines are taken from the
    Markdown and run as systemd would (no shell; stdout appended to the StandardOutput= file, stderr
    kept as the journal), and so is the ExecStartPost= line the text suggests. The cron line runs in
    /bin/sh with cron's minimal environment. Every run appends ONE JSON object to refresh.jsonl, a
    failed run a chiron.error/1 object, so the file is JSON Lines.
    """
    from chiron.engines import mirror

    s = new_session("mirror-refresh.md")  # its paths, and its table of failures (section 4)
    spec = write_spec(s.path("/srv/spec"), keys=keys, index_url=upstream.url, requirements=["alpha>=1.0"])
    store = seeded(s.path("/srv/chiron/store"))
    mirror.refresh(mirror.RefreshOptions(store=store, spec=spec, tool_wheels=tool_wheels, show_progress=False))
    s.path("/srv/chiron/tool-wheels").symlink_to(tool_wheels)
    section = scheduling_section()
    unit = systemd_service(section)

    # ---- systemd: LogsDirectory=chiron makes /var/log/chiron; User= and the timer are systemd's business.
    assert unit["LogsDirectory"] == ["chiron"]
    s.path("/var/log/chiron").mkdir(parents=True)
    (append,) = unit["StandardOutput"]
    assert append.startswith("append:")
    jsonl = s.path(append.removeprefix("append:"))
    environment = dict(pair.split("=", 1) for value in unit["Environment"] for pair in shlex.split(value))
    env = {**s.env, **{k: s.substitute(v) for k, v in environment.items()}}
    (exec_start,) = unit["ExecStart"]
    # "Add it to the scheduled job after the refresh, for example `ExecStartPost=...`" (section Pruning)
    (exec_post,) = re.findall(r"`ExecStartPost=([^`]+)`", (RUNBOOKS.parent / "mirror.md").read_text())

    def systemd_run(command: str) -> subprocess.CompletedProcess[bytes]:
        argv = [s.substitute(arg) for arg in shlex.split(command)]
        with jsonl.open("ab") as out:
            return subprocess.run(argv, env=env, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)

    quiet = systemd_run(exec_start)
    make_wheel(upstream.directory, "beta", "1.1")
    changed = systemd_run(exec_start)
    pruned = systemd_run(exec_post)
    for proc in (quiet, changed, pruned):
        assert proc.returncode == 0, proc.stderr.decode()
        journal = proc.stderr.decode().splitlines()
        assert all(isinstance(json.loads(line), dict) for line in journal), journal  # --log-format json
    runs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["changed"] for r in runs[:2]] == [False, True] and runs[0]["schema"] == "chiron.mirror-refresh/1"
    assert runs[2]["schema"] == "chiron.mirror-prune/1"  # ExecStartPost's stdout goes to the same file

    # ---- cron: the five time fields, then a /bin/sh command line, run with cron's environment.
    (cron,) = blocks(section, ("cron",))
    (entry,) = [line for line in cron.text.splitlines() if line.strip() and not line.startswith("#")]
    command = s.substitute(entry.split(None, 5)[5])
    cron_env = {"HOME": str(operator_home), "LOGNAME": "chiron", "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh"}

    def cron_run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/bin/sh", "-c", command], env=cron_env, capture_output=True, text=True)

    ok = cron_run()
    assert ok.returncode == 0 and not ok.stdout, ok  # nothing for cron to mail
    spec.write_text(spec.read_text().replace(upstream.url, "http://127.0.0.1:9/simple"))  # the index is down
    failed = cron_run()
    assert failed.stdout == "chiron refresh failed: exit 3\n", failed  # mailed by cron
    lines = jsonl.read_text().splitlines()
    assert len(lines) == len(runs) + 2
    objects = [json.loads(line) for line in lines]  # JSON Lines: one object per line, per run
    assert objects[-2]["schema"] == "chiron.mirror-refresh/1" and not objects[-2]["changed"]
    assert objects[-1]["schema"] == "chiron.error/1" and objects[-1]["exit_code"] == 3, objects[-1]
    assert "cannot reach the package index" in s.path("/var/log/chiron/refresh.err").read_text()
    down = s.sh("chiron mirror refresh --store /srv/chiron/store", exits=3)
    exit_row(s, 3, "environment ENV: cannot reach the package index at URL: REASON", down)


# ---------------------------------------------------------------- application-with-compose.md

COMPOSE_DOC = RUNBOOKS / "application-with-compose.md"
# The runbook's spec and Compose file name a registry, a port and a wait that a test cannot use: these
# stand in for them (the image is busybox from the session's registry on 127.0.0.1).
WEB_REF = "registry.lab.example/team/web:2.4.1"
DOC_URL = "http://127.0.0.1:8080/health"


def _compose_containers(project: str) -> list[str]:
    out = _run("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}")
    return out.stdout.split()


def _compose_down(project: str) -> None:
    if ids := _compose_containers(project):
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


def _runbook_app(s: Session, registry: str, url: str, version: str) -> tuple[str, str]:
    """The runbook's spec section and Compose file (section 1), as the test builds them: its image,
    port and deadline replaced, and a command for busybox (httpd serving /data/VERSION of the host's
    /srv/myapp/data; cgi-bin/health answers the live check). SIGKILL stops busybox at once."""
    text = s.doc.read_text()
    toml = next(b.text for b in blocks(text, ("toml",)) if "[host.live_check]" in b.text and "compose" in b.text)
    (yaml,) = [b.text for b in blocks(text, ("yaml",))]
    image = f"{registry}/busybox:1"
    port = url.split(":")[2].split("/")[0]
    spec = toml.replace(WEB_REF, image).replace(DOC_URL, url)
    spec = re.sub(r"^deadline = 120\b", "deadline = 4", spec, flags=re.M)
    spec = re.sub(r"^interval = 2\b", "interval = 0.3", spec, flags=re.M)
    assert spec.count(image) == 1 and url in spec and "deadline = 4" in spec and "interval = 0.3" in spec, spec
    serve = f"exec busybox httpd -f -p 127.0.0.1:{port} -h /data/{version}"
    compose = s.rooted(yaml.replace(WEB_REF, image)).replace(
        "    restart: unless-stopped\n",
        f"    restart: unless-stopped\n    stop_signal: SIGKILL\n    command: [sh, -c, {json.dumps(serve)}]\n",
    )
    assert image in compose and "command:" in compose and str(s.path("/srv/myapp/data")) in compose, compose
    return spec, compose


def _docroot(directory: Path, version: str, health: str) -> None:
    """What release ``version`` serves: /version, and a CGI /cgi-bin/health answering ``health``."""
    cgi = directory / version / "cgi-bin"
    cgi.mkdir(parents=True)
    (directory / version / "version").write_text(f"{version}\n")
    status, body = health.split(" ", 1)
    (cgi / "health").write_text(
        f'#!/bin/sh\necho "Status: {status}"\necho "Content-Type: text/plain"\necho\necho {body}\n'
    )
    (cgi / "health").chmod(0o755)


def _example_lines(s: Session, first: str) -> list[str]:
    """The runbook's example output block (a plain fence) that begins with ``first``, line by line."""
    (block,) = [b for b in blocks(s.doc.read_text(), ("",)) if b.text.startswith(first)]
    return block.text.splitlines()


def _as_printed(example: str, ids: dict[str, str], url: str) -> re.Pattern[str]:
    """A runbook example as this test's host prints it: its release ids and URL are the test's, the
    attempt count a value; `...` and upper-case words stand for anything, as in ``shape``."""
    for doc_id, real in ids.items():
        example = example.replace(doc_id, real)
    example = re.sub(r"\d+ attempt\(s\)", "N attempt(s)", example)
    return shape(example.replace(DOC_URL, url))


def test_application_with_compose(  # type: ignore[no-untyped-def]
    new_session, registry: str, keys: Path, index: LocalIndex, tool_wheels: Path, session_cache: Path
) -> None:
    """myapp as busybox plus the runbook's own Compose file and spec: doctor (section 2), install 2.4.0
    and upgrade to 2.4.1 under a live check (3), a 2.4.2 that fails its check reverts by itself and
    the previous project is started by hand (4), the boot unit's command (5)."""
    if shutil.which("docker-compose") is None and subprocess.run(["docker", "compose", "version"]).returncode:
        pytest.skip("NO COMPOSE CLI: tests/provision.py installs Debian's docker-compose")
    project = "chiron-myapp"
    s = new_session("application-with-compose.md")
    url = f"http://127.0.0.1:{free_port()}/cgi-bin/health"
    data = s.path("/srv/myapp/data")  # the host's data directory, bind-mounted into the container
    healths = {"2.4.0": "200 ok", "2.4.1": "200 ok", "2.4.2": "503 starting"}  # 2.4.2 never becomes healthy
    built: dict[str, Path] = {}
    epoch = int(time.time()) - 3600
    for n, (version, health) in enumerate(healths.items()):
        _docroot(data, version, health)
        spec_text, compose = _runbook_app(s, registry, url, version)
        work = s.root / "build" / version
        (work / "deploy").mkdir(parents=True)
        (work / "deploy" / "compose.yaml").write_text(compose)
        spec = write_spec(work, keys=keys, index_url=index.url, requirements=["beta==1.0"], name="myapp",
                          version=version, extra=spec_text)  # fmt: skip
        built[version] = do_build(
            spec, work / f"myapp-{version}.pex", tool_wheels, session_cache, epoch=epoch + n
        ).output
    appliances = s.path("/srv/appliances")
    deliver(built["2.4.0"], appliances, "app.pex")
    s.cd(appliances)
    s.bind("HEX", fingerprint(keys / "1.root.json"))
    prefix = s.path("/opt/chiron")
    # The hooks of the spec run myapp-migrate from PATH (the release's venv/bin first, then the host's).
    tools, marks = s.root / "usr-local-bin", s.root / "migrations"
    tools.mkdir()
    (tools / "myapp-migrate").write_text(f'#!/bin/sh\necho "$* $CHIRON_RELEASE $CHIRON_PREVIOUS" >> {marks}\n')
    (tools / "myapp-migrate").chmod(0o755)
    s.env["PATH"] = f"{tools}:{s.env['PATH']}"
    ids: dict[str, str] = {}  # version -> release id, as the host printed them

    def serves() -> str:
        for _ in range(100):  # a container just (re)started: bounded wait
            try:
                return _run("curl", "-sf", "--noproxy", "*", url.replace("/cgi-bin/health", "/version")).stdout.strip()
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        return "nothing answers"

    def release_of(version: str, text: str) -> str:
        match = re.search(rf"\(release (myapp-{re.escape(version)}-[\w.]+)", text)
        assert match, text
        ids[version] = match[1]
        return match[1]

    def checked(s: Session, r: Result) -> None:
        assert_ready(r)
        assert re.search(r"^ok +images\b", r.stdout, re.M) and re.search(r"^ok +compose\b", r.stdout, re.M), r.stdout
        # "The images check needs a Docker Engine that answers ... an error for an appliance with compose".
        no_engine = s.sh(f"DOCKER_HOST=unix://{s.root}/no-docker.sock ./app.pex doctor --prefix /opt/chiron", exits=3)
        assert "not ready" in no_engine.stdout and not re.search(r"^ok +images\b", no_engine.stdout, re.M)
        # Section 1: inspect lists the Compose file; build refuses one that builds, before fetching anything.
        assert re.search(r"^ +file +1 ", s.sh("chiron inspect app.pex").stdout, re.M)  # the one [[files]] entry
        bad = s.root / "build" / "bad"
        shutil.copytree(s.root / "build" / "2.4.0", bad, ignore=shutil.ignore_patterns("*.pex*"))
        yaml = bad / "deploy" / "compose.yaml"
        yaml.write_text(yaml.read_text().replace("    restart:", "    build: .\n    restart:"))
        (bad / "tool-wheels").symlink_to(tool_wheels)
        refused = s.sh(f"chiron build {bad}/appliance.toml -o {bad}/x.pex --tool-wheels {bad}/tool-wheels", exits=2)
        assert "'build' cannot run on a disconnected host" in refused.output and not (bad / "x.pex").exists()

    def installed_and_upgraded(s: Session) -> None:
        # Install and upgrade "exactly as in install-and-upgrade.md".
        first = s.sh("./app.pex install --prefix /opt/chiron --root-sha256 HEX")
        release_of("2.4.0", first.stdout)
        assert "live check passed" in first.stdout and serves() == "2.4.0", first.output
        deliver(built["2.4.1"], appliances, "new.pex")
        r = s.sh("/opt/chiron/bin/chiron upgrade /srv/appliances/new.pex --prefix /opt/chiron")
        release_of("2.4.1", r.stdout)
        doc_ids = {"myapp-2.4.1-1754031020": ids["2.4.1"], "myapp-2.4.0-1753426201": ids["2.4.0"]}
        for line in _example_lines(s, "upgraded to myapp 2.4.1"):
            assert _as_printed(line, doc_ids, url).search(r.stdout), f"{line!r} not in:\n{r.output}"
        assert serves() == "2.4.1"
        # post_switch ran after the switch, on trial: current is already the new release.
        rel = prefix / "releases"
        assert marks.read_text().splitlines()[-1] == f"--apply {rel / ids['2.4.1']} {rel / ids['2.4.0']}"
        # Each image pinned to the signed one: the container runs the image compose.json names, by ID.
        pinned = json.loads((rel / ids["2.4.1"] / "compose.json").read_text())["services"]["web"]["image"]
        (cid,) = _compose_containers(project)
        assert (
            pinned.startswith("sha256:") and _run("docker", "inspect", "-f", "{{.Image}}", cid).stdout.strip() == pinned
        )

    def status(s: Session, r: Result) -> None:
        assert f"last trial: release {ids['2.4.1']} committed at " in r.stdout, r.stdout
        assert re.search(rf"^last live check: passed at .*: {re.escape(url)} answered HTTP 200$", r.stdout, re.M)

    def listed(s: Session, r: Result) -> None:
        assert re.search(rf"^{project}[-_]web[-_]1 .* Up", r.stdout, re.M), r.output

    def broken_release(s: Session) -> None:
        trusted = prefix / "state" / "metadata" / "targets.json"
        deliver(built["2.4.2"], appliances, "next.pex")
        r = s.sh("/opt/chiron/bin/chiron upgrade /srv/appliances/next.pex --prefix /opt/chiron", exits=3)
        failed = (prefix / "releases").glob("myapp-2.4.2-*")
        (ids["2.4.2"],) = [p.name for p in failed]
        doc_ids = {"myapp-2.4.1-1754031020": ids["2.4.2"], "myapp-2.4.0-1753426201": ids["2.4.1"]}
        example = " ".join(_example_lines(s, "chiron: error: release"))
        assert _as_printed(example, doc_ids, url).search(r.stderr), f"{example!r} not in:\n{r.output}"
        assert f"{url} answered HTTP 503, not 200: starting" in r.stderr
        # current points at the previous release, its project is up again, on_revert of 2.4.2 ran (with
        # current already back: CHIRON_RELEASE is the release brought back).
        assert (prefix / "current").resolve().name == ids["2.4.1"] and serves() == "2.4.1"
        rel = prefix / "releases"
        assert marks.read_text().splitlines()[-1] == f"--to-previous {rel / ids['2.4.1']} {rel / ids['2.4.2']}"
        audit = [json.loads(line) for line in (prefix / "state" / "audit.jsonl").read_text().splitlines()]
        assert [(e["op"], e["result"]) for e in audit[-3:]] == [
            ("upgrade", "ok"),
            ("trial", "failed"),
            ("revert", "ok"),
        ]
        assert audit[-3].get("trial") and "answered HTTP 503" in audit[-2]["check"], audit[-3:]
        # Not a downgrade of trust: the failed release's targets metadata stays trusted.
        signed = json.loads(
            _run(VENV_CHIRON, "verify", built["2.4.2"], "--root", keys / "1.root.json", "--json").stdout
        )
        assert json.loads(trusted.read_text())["signed"]["version"] == signed["roles"]["targets"]["version"]
        # The previous application did not come up (its container is gone): the next command starts it.
        _compose_down(project)
        assert serves() == "nothing answers"

    def started_by_hand(s: Session, r: Result) -> None:
        assert serves() == "2.4.1"
        s.cd(appliances)

    try:
        run_runbook(
            s,
            [
                Hook("./app.pex doctor", after=checked),
                Hook("/opt/chiron/bin/chiron status", before=installed_and_upgraded, after=status),
                Hook("compose.json ps", after=listed),
                Hook("-f compose.json up -d", before=broken_release, after=started_by_hand),
            ],
        )
        # Section 5: the boot unit's command settles nothing here (no trial left open) and exits 0.
        (unit,) = [b for b in blocks(s.doc.read_text(), ("ini",)) if "ExecStart=" in b.text]
        (exec_start,) = [line.split("=", 1)[1] for line in unit.text.splitlines() if line.startswith("ExecStart=")]
        assert s.sh(exec_start).stdout.strip() == "nothing to recover"
    finally:
        _compose_down(project)


# ---------------------------------------------------------------- media-and-diodes.md


def figures(session: Session, example: str, result: Result) -> None:
    """The runbook shows ``example`` as a line a command prints, with illustrative figures (numbers of four
    digits or more): it must print that line, word for word but those figures."""
    said = " ".join(session.doc.read_text().split())
    assert " ".join(example.split()) in said, f"{session.doc.name} no longer says {example!r}: update the test"
    parts = re.split(r"(\d{4,})", session.substitute(example))
    pattern = "".join(r"\d+" if n % 2 else re.escape(part) for n, part in enumerate(parts))
    assert re.search(pattern, result.output), (
        f"{session.doc.name} says {example!r}; the command printed:\n{result.output}"
    )


def table_row(session: Session, code: int, message: str, result: Result) -> None:
    """The runbook's table has a row ``| code, `message` | ...`` (its first column: the exit code and the
    message), and the command exited so and printed the message (an upper-case word a value)."""
    rows = [line for line in session.doc.read_text().splitlines() if line.startswith(f"| {code}, ")]
    assert any(f"`{message}`" in row.split(" | ")[0] for row in rows), f"{session.doc.name}: no row `{code}, {message}`"
    assert result.code == code, result.output
    assert shape(session.rooted(message)).search(result.output), result.output


def test_media_and_diodes(  # type: ignore[no-untyped-def]
    new_session, appliance: Path, keys: Path, index: LocalIndex, tool_wheels: Path, session_cache: Path, tmp_path: Path
) -> None:
    """Carry demo 1.2.0 on three "discs" (section A) and through a "diode" (B). A disc is the files of
    a real ISO image made by the runbook's xorriso command, read back with xorriso into /media/cdrom
    (burning and mounting need a drive: those blocks are marked not run); the diode's inbox is a
    directory the test fills in its own order, one volume still being written. The receiving host
    runs an older chiron (the session's demo 1.0.0) and upgrades; a second host has none (A.5).

    Scale: demo 1.2.0 packs a 48 MiB file, so it splits into three volumes as the runbook's example
    does (the small members; the file; the tool zip, each a signed unit that is never cut). The
    runbook's sizes (4480M for a DVD, 1G for the guard) are bound to the smallest size `split`
    names when given one too small."""
    s = new_session("media-and-diodes.md")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "manual.bin").write_bytes(random.Random(1).randbytes(48 << 20))
    spec = write_spec(
        spec_dir,
        keys=keys,
        index_url=index.url,
        requirements=["alpha==1.0"],
        version="1.2.0",
        extra='[[files]]\nsrc = "manual.bin"\ndest = "docs/manual.bin"\n',
    )
    original = do_build(spec, tmp_path / "dist" / "demo-1.2.0.pex", tool_wheels, session_cache).output
    sending = s.root / "connected"  # the connected side's working directory
    deliver(original, sending)
    s.cd(sending)
    s.export("ROOT", fingerprint(keys / "1.root.json"))
    allowed = s.path("/path/to/allowed_signers")
    allowed.parent.mkdir(parents=True)
    shutil.copyfile(keys / "allowed_signers", allowed)
    etc = s.path("/etc/chiron")
    etc.mkdir(parents=True)
    shutil.copyfile(keys / "1.root.json", etc / "1.root.json")
    s.path("/var/log").mkdir(parents=True)
    # The receiving host runs an older chiron.
    s.sh(f"chiron install {appliance} --prefix /opt/chiron --root-sha256 $ROOT")
    outgoing = s.path("/srv/outgoing")
    cdrom = s.path("/media/cdrom")
    inbox = s.path("/srv/diode/inbox")
    volume = "demo-1.2.0.part{:03d}-of-003.chv".format

    def size_named(s: Session) -> None:
        # "If one signed unit ... does not fit, split refuses (exit 2) and names a --size that works."
        small = s.sh("chiron split demo-1.2.0.pex --size 1M -o /srv/outgoing/too-small", exits=2)
        match = re.search(r"member files/docs/manual\.bin is \d+ bytes .*use a --size of (\d+) or more", small.output)
        assert match, small.output
        assert not s.path("/srv/outgoing/too-small").exists()
        s.bind("4480M", match[1])
        s.bind("1G", match[1])

    def split_printed(s: Session, r: Result) -> None:
        figures(s, "split demo-1.2.0.pex (demo 1.2.0, 11127242752 bytes) into 3 volume(s) of at most 4480M:", r)
        for n, size in ((1, 4630606336), (2, 4630606336), (3, 1866337280)):
            figures(s, f"  /srv/outgoing/demo-1.2.0/{volume(n)}  {size} bytes", r)
        figures(s, "manifest (size and sha256 of each file): /srv/outgoing/demo-1.2.0/demo-1.2.0.volumes.txt", r)
        figures(s, "detached signature: /srv/outgoing/demo-1.2.0/demo-1.2.0.sig", r)
        limit = int(s.bindings["4480M"])
        assert all(p.stat().st_size <= limit for p in (outgoing / "demo-1.2.0").glob("*.chv"))
        # "The directory must not already hold volumes of this appliance (exit 2)."
        s.sh("chiron split demo-1.2.0.pex --size 4480M -o /srv/outgoing/demo-1.2.0", exits=2)
        # The operator saves the stdlib script of format.md beside the volumes, for disc 1.
        (script,) = [
            b for b in blocks((RUNBOOKS.parent / "format.md").read_text(), ("python",)) if "chiron-join.py" in b.text
        ]
        (outgoing / "demo-1.2.0" / "chiron-join.py").write_text(script.text + "\n")

    def other_discs(s: Session, r: Result) -> None:
        # "for disc 1 of 3": the same image command makes discs 2 and 3 (without the script).
        for n in (2, 3):
            text = r.command.text.replace(volume(1), volume(n)).replace("DEMO_1_2_0_1", f"DEMO_1_2_0_{n}")
            s.sh(text.replace("disc1.iso", f"disc{n}.iso").replace(" chiron-join.py", ""))

    def insert(n: int) -> Callable[[Session], None]:
        """Disc N in the drive: the files of its image, read back by xorriso, at /media/cdrom."""

        def hook(s: Session) -> None:
            shutil.rmtree(cdrom, ignore_errors=True)
            _run("xorriso", "-osirrox", "on", "-indev", outgoing / f"disc{n}.iso", "-extract", "/", cdrom)

        return hook

    def disc_checked(s: Session, r: Result) -> None:
        figures(
            s,
            "verified /media/cdrom/demo-1.2.0.part001-of-003.chv: volume 1 of 3 of demo 1.2.0 (bytes 0-4630503936 of "
            "demo-1.2.0.pex), 4630503936 bytes hashed against the signed targets, every byte accounted for "
            "(anchor: --root-sha256)",
            r,
        )
        assert sorted(p.name for p in cdrom.iterdir()) == sorted(
            [volume(1), "demo-1.2.0.volumes.txt", "demo-1.2.0.sig", "chiron-join.py"]
        )

    receive = "/opt/chiron/bin/chiron receive /media/cdrom --to /srv/appliances --root-sha256 $ROOT"
    appliances = s.path("/srv/appliances")

    def discs_received(s: Session, r: Result) -> None:
        figures(
            s,
            "received volume(s) 2 of 3 of demo 1.2.0 into /srv/appliances, each verified; 4630503936 bytes read from "
            "/media/cdrom",
            r,
        )
        figures(s, "still missing: volume(s) 1, 3: receive them the same way", r)
        (partial,) = (appliances / ".chiron-receive").iterdir()  # one per appliance being received
        assert partial.is_dir() and not (appliances / "demo-1.2.0.pex").exists()
        insert(3)(s)
        assert "still missing: volume(s) 1: receive them" in s.sh(receive).stdout
        insert(2)(s)  # "Receiving a disc twice does no harm"
        assert "still missing: volume(s) 1: receive them" in s.sh(receive).stdout
        insert(1)(s)
        last = s.sh(receive)
        figures(
            s,
            "received /srv/appliances/demo-1.2.0.pex: demo 1.2.0, 11127242752 bytes, verified (anchor: --root-sha256); "
            "1866234880 bytes read from /media/cdrom, 9261007872 kept from an earlier run and checked again",
            last,
        )
        assert (appliances / "demo-1.2.0.pex").read_bytes() == original.read_bytes()
        assert (appliances / "demo-1.2.0.pex.sig").read_bytes() == Path(f"{original}.sig").read_bytes()
        assert "already received" in s.sh(receive).output
        bad_discs(s)

    def bad_discs(s: Session) -> None:
        # Rows of the table, each from a disc of its own into a directory of its own.
        good = cdrom / volume(1)
        header = read_header(good)
        assert header is not None
        wheel = next(m for m in read_layout(original).members if m.name.startswith("wheels/"))
        at = good.stat().st_size - header.length + wheel.offset + 10

        def disc(name: str, files: dict[str, bytes]) -> str:
            directory = s.path(f"/media/{name}")
            directory.mkdir()
            for file, data in files.items():
                (directory / file).write_bytes(data)
            return f"/opt/chiron/bin/chiron receive /media/{name} --to /srv/scratch/{name} --root-sha256 $ROOT"

        data = good.read_bytes()
        damaged = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
        r = s.sh(disc("damaged", {volume(1): damaged}), exits=1)
        table_row(s, 1, "... sha256 does not match the signed targets (a damaged copy)", r)
        assert wheel.name in r.output, r.output
        r = s.sh(disc("short", {volume(1): data[: len(data) // 2]}), exits=1)
        table_row(s, 1, "...: volume is N bytes, its header says M (truncated: an incomplete copy?)", r)
        r = s.sh(disc("other-root", {volume(1): data}).replace("$ROOT", "0" * 64), exits=1)
        table_row(s, 1, "root: no root metadata ... has sha256 ...", r)
        r = s.sh(disc("two-copies", {volume(1): data, "copy.chv": damaged}), exits=4)
        table_row(s, 4, "... are both volume N of M ... but they differ", r)
        older = s.path("/srv/outgoing/demo-1.0.0")
        s.sh(f"chiron split {appliance} --size 1G -o {older}")
        (one,) = older.glob("*.chv")
        r = s.sh(disc("two-sets", {volume(1): data, one.name: one.read_bytes()}), exits=2)
        table_row(s, 2, "volumes of more than one appliance or version in ...", r)
        taken = disc("taken", {volume(1): data})
        s.path("/srv/scratch/taken").mkdir(parents=True)
        (s.path("/srv/scratch/taken") / "demo-1.2.0.pex").write_bytes(b"another file\n")
        r = s.sh(taken, exits=2)
        table_row(s, 2, "... already exists and is another file", r)

    def signature_good(s: Session, r: Result) -> None:
        # "The appliance is byte-identical to the one that was split, so its detached signature verifies."
        assert 'Good "chiron-appliance" signature for chiron' in r.output, r.output

    def upgraded(s: Session, r: Result) -> None:
        assert "upgraded to demo 1.2.0" in r.stdout, r.output

    def copied_by_other_means(s: Session) -> None:
        # This time the discs' files were copied off by other means; the received file is gone.
        for n in (1, 2, 3):
            _run(
                "xorriso",
                "-osirrox",
                "on",
                "-indev",
                outgoing / f"disc{n}.iso",
                "-extract",
                "/",
                s.path(f"/srv/incoming/disc{n}"),
            )
        (appliances / "demo-1.2.0.pex").unlink()
        (appliances / "demo-1.2.0.pex.sig").unlink()

    def joined(s: Session, r: Result) -> None:
        assert "joined 3 volume(s) into" in r.stdout and "every byte verified" in r.stdout, r.output
        assert (appliances / "demo-1.2.0.pex").read_bytes() == original.read_bytes()
        assert (appliances / "demo-1.2.0.pex.sig").is_file()

    def host_without_chiron(s: Session) -> None:
        # Another host: no chiron, no /srv/incoming yet; disc 1 goes in first.
        s.path("/opt/chiron").rename(s.path("/opt/chiron-first-host"))
        s.path("/srv/incoming").rename(s.path("/srv/incoming-first-host"))
        insert(1)(s)

    def each_disc_copied(s: Session, r: Result) -> None:
        for n in (3, 2):
            insert(n)(s)
            s.sh(r.command.text)

    def joined_by_script(s: Session, r: Result) -> None:
        assert s.path("/srv/incoming/demo-1.2.0.pex").read_bytes() == original.read_bytes()

    def installed(s: Session, r: Result) -> None:
        assert "installed demo 1.2.0" in r.stdout, r.output

    def back_on_the_sending_side(s: Session) -> None:
        s.cd(sending)

    def same_volumes(s: Session, r: Result) -> None:
        # "the same appliance and --size give the same volumes, byte for byte"
        outbox = s.path("/srv/diode/outbox/demo-1.2.0")
        names = sorted(p.name for p in outbox.iterdir())
        assert names == sorted([volume(1), volume(2), volume(3), "demo-1.2.0.volumes.txt", "demo-1.2.0.sig"])
        for name in names:
            assert (outbox / name).read_bytes() == (outgoing / "demo-1.2.0" / name).read_bytes(), name
        # "A guard that wants a manifest ... With standard tools: awk ... | sha256sum -c -"
        (check,) = re.findall(r"`(awk [^`]+sha256sum -c -)`", s.doc.read_text())
        checked = s.sh(f"(cd /srv/diode/outbox/demo-1.2.0 && {check})")
        assert checked.stdout.count(": OK") == 4, checked.output

    def some_arrive(s: Session) -> None:
        # The receiving side of the diode is another host. Volume 2 and the small files have arrived,
        # volume 3 is still being written.
        appliances.rename(s.path("/srv/appliances-dvd-host"))
        outbox = s.path("/srv/diode/outbox/demo-1.2.0")
        inbox.mkdir(parents=True)
        for name in ("demo-1.2.0.sig", volume(2), "demo-1.2.0.volumes.txt"):
            shutil.copyfile(outbox / name, inbox / name)
        third = (outbox / volume(3)).read_bytes()
        (inbox / volume(3)).write_bytes(third[: len(third) // 2])

    log = s.path("/var/log/chiron-receive.jsonl")

    def waiting(s: Session, r: Result) -> None:
        claim(s, "passed over ... (still arriving? receive it again later)", r)
        first = json.loads(log.read_text().splitlines()[-1])
        assert first["schema"] == "chiron.receive/1" and first["complete"] is False, first
        assert first["volumes"] == {"count": 3, "received": [2], "missing": [1, 3]}, first
        # The rest arrives (volume 1 renamed by a guard that allows only some extensions); cron runs.
        outbox = s.path("/srv/diode/outbox/demo-1.2.0")
        shutil.copyfile(outbox / volume(3), inbox / volume(3))
        shutil.copyfile(outbox / volume(1), inbox / "demo-1.2.0.part001-of-003.bin")
        (cron,) = [b for b in blocks(s.doc.read_text(), ("",)) if b.text.startswith("*/5 ")]
        fields = cron.text.strip().split(None, 6)
        assert fields[5] == "root", fields  # /etc/cron.d: the user, then the command
        env = {"HOME": str(s.root / "root"), "LOGNAME": "root", "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh"}
        for _ in range(2):
            ran = subprocess.run(["/bin/sh", "-c", s.substitute(fields[6])], env=env, capture_output=True, text=True)
            assert ran.returncode == 0 and not ran.stdout and not ran.stderr, ran
        runs = [json.loads(line) for line in log.read_text().splitlines()]  # JSON Lines: one object per line
        done, again = runs[-2], runs[-1]
        assert done["complete"] is True and done["output"] == str(appliances / "demo-1.2.0.pex"), done
        assert done["signature"] == str(appliances / "demo-1.2.0.pex.sig"), done
        assert done["trust_anchor"] == "--root file", done
        assert done["volumes"]["missing"] == [] and done["resumed_bytes"] > 0, done
        assert any("already received" in n for n in again["notices"]), again
        assert "already received" in s.path("/var/log/chiron-receive.err").read_text()  # stderr: kept apart
        assert (appliances / "demo-1.2.0.pex").read_bytes() == original.read_bytes()

    def inbox_volume_checked(s: Session, r: Result) -> None:
        assert "volume 2 of 3 of demo 1.2.0" in r.stdout and "every byte accounted for" in r.stdout, r.output

    def inbox_cleared(s: Session, r: Result) -> None:
        assert list(inbox.iterdir()) == []

    run_runbook(
        s,
        [
            Hook("chiron split demo-1.2.0.pex --size 4480M", before=size_named, after=split_printed),
            Hook("xorriso -as mkisofs", after=other_discs),
            Hook("chiron verify /media/cdrom/", before=insert(1), after=disc_checked),
            Hook("chiron receive /media/cdrom", before=insert(2), after=discs_received),
            Hook("ssh-keygen -Y verify", after=signature_good),
            Hook("chiron upgrade demo-1.2.0.pex", after=upgraded),
            Hook("chiron join", before=copied_by_other_means, after=joined),
            Hook("mkdir -p /srv/incoming", before=host_without_chiron),
            Hook("cp /media/cdrom/demo-1.2.0.part", after=each_disc_copied),
            Hook("python3 chiron-join.py", after=joined_by_script),
            Hook(
                "ssh-keygen -Y verify",
                occurrence=2,
                after=signature_good,
            ),
            Hook("./demo-1.2.0.pex install", after=installed),
            Hook("chiron verify demo-1.2.0.pex", occurrence=2, before=back_on_the_sending_side),
            Hook("--size 1G", after=same_volumes),
            Hook("chiron receive /srv/diode/inbox", before=some_arrive, after=waiting),
            Hook("part002-of-003.chv --root-sha256", after=inbox_volume_checked),
            Hook("rm /srv/diode/inbox/", after=inbox_cleared),
        ],
    )
