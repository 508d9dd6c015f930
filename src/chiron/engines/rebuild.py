"""``chiron rebuild``: rebuild an appliance from the spec, lock, wheels, files, root chain and tool
code it carries, then compare it with the original member by member.

Offline (default) the wheels come from the archive itself; ``--online`` fetches them again from the
URLs in the lock, which shows whether upstream still serves the same bytes. The signing keys are the
spec's key URIs, resolved against ``--base`` (the folder the spec was built from). Ed25519
signatures are deterministic, so an appliance signed with Ed25519 keys rebuilds byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.archive.layout import METADATA_PREFIX, TOOL_TARGET, Layout, root_member_version
from chiron.archive.reader import read_layout
from chiron.core.clock import iso, parse_iso
from chiron.engines.verify import VerifiedAppliance, verified
from chiron.errors import VerificationError
from chiron.sources.toolcache import ToolZip, tool_members_of


@dataclass
class RebuildReport:
    original: str
    rebuilt: str
    identical: bool = False
    differences: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "chiron.rebuild/1",
            "original": self.original,
            "rebuilt": self.rebuilt,
            "identical": self.identical,
            "differences": self.differences,
        }


def _read(path: Path, layout: Layout, name: str) -> bytes:
    offset, length = layout.regions()[name]
    with path.open("rb") as f:
        return os.pread(f.fileno(), length, offset)


def _unpack(appliance: VerifiedAppliance, ws: Path, *, wheels: bool) -> tuple[Path | None, ToolZip]:
    """Lay out what the appliance carries in the workspace ``ws``, every signed member re-hashed as it
    is copied: spec, lock, root chain, [[files]], wheels (offline) and the OCI layout. Returns the
    OCI layout (None without images) and the tool zip."""
    (ws / "appliance.toml").write_bytes(appliance.read("spec/appliance.toml"))
    (ws / "pylock.toml").write_bytes(appliance.read("lock/pylock.toml"))
    roots = ws / "root"
    roots.mkdir()
    has_images = False
    for m in appliance.layout.members:
        if root_member_version(m.name) is not None:
            # Root metadata is not a target: python-tuf verified the chain while verify ran.
            (roots / m.name.removeprefix(METADATA_PREFIX)).write_bytes(appliance.reader.read(m.name))
        elif m.name.startswith("files/"):
            appliance.copy(m.name, ws / "files" / m.name.removeprefix("files/"))
        elif m.name.startswith("wheels/") and wheels:
            # Offline: a private cache seeded with the archive's own wheels (content-addressed).
            digest = appliance.target(m.name).sha256
            appliance.copy(m.name, ws / "cache" / "sha256" / digest[:2] / digest)
        elif m.name.startswith("images/"):
            appliance.copy(m.name, ws / "oci" / m.name.removeprefix("images/"))
            has_images = True
    tool = ws / "tool.zip"
    appliance.copy(TOOL_TARGET, tool)
    packed = ToolZip(tool, appliance.target(TOOL_TARGET).sha256, tool_members_of(tool))
    return (ws / "oci" if has_images else None), packed


def rebuild(
    archive: Path,
    output: Path,
    *,
    base: Path,
    tool_wheels: Path | None,
    cache_dir: Path,
    online: bool = False,
    root_file: Path | None = None,
    root_sha256: str | None = None,
) -> RebuildReport:
    """Rebuild ``archive`` into ``output`` and compare; the caller decides what a difference means."""
    from chiron.engines.build import BuildOptions, build

    with verified(archive, root_file=root_file, root_sha256=root_sha256) as report:
        if not report.ok:
            raise VerificationError(report.problems, hint="rebuild only from a verified appliance")
        appliance = report.verified
        manifest = report.manifest
        with tempfile.TemporaryDirectory(prefix="chiron-rebuild-") as tmp_s:
            ws = Path(tmp_s)
            layout_dir, tool = _unpack(appliance, ws, wheels=not online)
            build(
                BuildOptions(
                    spec=ws / "appliance.toml",
                    output=output,
                    tool_wheels=tool_wheels or ws,
                    cache_dir=cache_dir if online else ws / "cache",
                    tool_format=appliance.layout.tool_format,  # type: ignore[arg-type]
                    source_date_epoch=_epoch(manifest["created"]),
                    metadata_version=int(report.roles["targets"]["version"]),
                    shebang=appliance.layout.shebang.decode().removeprefix("#!").rstrip("\n"),
                    show_progress=False,
                    base_dir=base,
                    root_chain=ws / "root",
                    lock_file=ws / "pylock.toml",
                    files_dir=ws / "files",
                    tool=tool,
                    images=(layout_dir, list(manifest["images"])) if layout_dir and manifest.get("images") else None,
                    appliance_version=str(manifest["version"]),
                    check_store=False,
                )
            )
    result = RebuildReport(original=str(archive), rebuilt=str(output))
    result.differences = compare(archive, output)
    result.identical = not result.differences and _same_file(archive, output)
    return result


def _epoch(created: str) -> int:
    return int(parse_iso(created).timestamp())


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _digest(path: Path, layout: Layout, name: str) -> str:
    return hashlib.sha256(_read(path, layout, name)).hexdigest()


def compare(original: Path, rebuilt: Path) -> list[dict[str, str]]:
    """Members that differ, in file order, each with the most likely cause."""
    a, b = read_layout(original), read_layout(rebuilt)
    ra, rb = a.regions(), b.regions()
    diffs: list[dict[str, str]] = []
    if a.shebang != b.shebang:
        diffs.append({"member": "_archive/shebang", "cause": "the interpreter line differs (--shebang)"})
    order_a = [m.name for m in a.members]
    order_b = [m.name for m in b.members]
    for name in order_a:
        if name not in rb:
            diffs.append({"member": name, "cause": "missing from the rebuild (inputs changed)"})
    for name in order_b:
        if name not in ra:
            diffs.append({"member": name, "cause": "new in the rebuild (inputs changed)"})
    common = [n for n in order_a if n in rb]
    if [n for n in order_b if n in ra] != common:
        diffs.append({"member": "(index)", "cause": "members are in a different order (ordering)"})
    for name in [*common, TOOL_TARGET]:
        if name == TOOL_TARGET:
            same = a.zip_length == b.zip_length and _digest(original, a, name) == _digest(rebuilt, b, name)
        else:
            same = ra[name][1] == rb[name][1] and _digest(original, a, name) == _digest(rebuilt, b, name)
        if not same:
            diffs.append({"member": name, "cause": _cause(name, original, a, rebuilt, b)})
    return diffs


def _cause(name: str, pa: Path, a: Layout, pb: Path, b: Layout) -> str:
    if name == "appliance.json":
        ma, mb = json.loads(_read(pa, a, name)), json.loads(_read(pb, b, name))
        changed = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
        if changed == ["created"]:
            return f"timestamps: created {ma['created']} vs {mb['created']} (SOURCE_DATE_EPOCH)"
        return "manifest fields differ: " + ", ".join(changed)
    if name.startswith("wheels/"):
        return "a changed upstream artifact: the rebuilt wheel has other bytes"
    if name == TOOL_TARGET:
        return "the tool code differs (another chiron or other tool wheels)"
    if name.startswith(METADATA_PREFIX):
        from tuf.api.metadata import Metadata

        ma, mb = Metadata.from_bytes(_read(pa, a, name)), Metadata.from_bytes(_read(pb, b, name))
        if ma.signed_bytes == mb.signed_bytes:
            return (
                "signatures differ over identical content (a non-deterministic key such as ECDSA/HSM, or another key)"
            )
        if ma.signed.expires != mb.signed.expires:
            return f"timestamps: expires {iso(ma.signed.expires)} vs {iso(mb.signed.expires)}"
        if ma.signed.version != mb.signed.version:
            return f"metadata version {ma.signed.version} vs {mb.signed.version}"
        return "signed content differs (it lists other targets: see the members above)"
    if name.startswith("lock/"):
        return "the lock differs (re-resolved or edited)"
    if name.startswith("spec/"):
        return "the spec differs (edited or reordered)"
    return "content differs"
