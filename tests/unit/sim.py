"""An in-memory appliance repository for the unit tier (in the spirit of python-tuf's RepositorySimulator).

It signs real TUF metadata with Ed25519 keys held in memory and writes real ``chiron-appliance/1``
files with chiron's own ArchiveWriter and build_repository, in milliseconds: no pex, no pip, no index.
The "tool" is a tiny real zip, so the file is structurally a complete appliance that verify checks
byte for byte. Tests change one thing (a member, a key, a version, a clock) and watch the decision.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, Root, TargetFile

from chiron.archive.layout import FORMAT, SHEBANG_TARGET, TOOL_MEMBERS_TARGET, TOOL_TARGET
from chiron.archive.writer import ArchiveWriter
from chiron.core.text import canonical_json
from chiron.trust.metadata import ONLINE_ROLES, build_repository, to_bytes

SHEBANG = b"#!/usr/bin/env python3\n"
ROLES = ("root", *ONLINE_ROLES)


def tool_zip(files: dict[str, bytes] | None = None) -> bytes:
    """A small real zip standing in for the pex (stored entries, no data descriptors)."""
    files = files or {"__main__.py": b"print('chiron test tool')\n"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return buf.getvalue()


@dataclass
class Sim:
    """Keys per role, the root chain, and a metadata version counter; ``appliance()`` writes a file."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    expires: dict[str, timedelta] = field(default_factory=lambda: {r: timedelta(days=30) for r in ROLES})
    signers: dict[str, list[Signer]] = field(default_factory=dict)
    chain: list[bytes] = field(default_factory=list)
    version: int = 0

    def __post_init__(self) -> None:
        self.signers = {role: [CryptoSigner.generate_ed25519()] for role in ROLES}
        root = Root(expires=self.now + self.expires["root"], consistent_snapshot=False)
        for role in ROLES:
            root.add_key(self.signers[role][0].public_key, role)
        md = Metadata(root)
        md.sign(self.signers["root"][0])
        self.chain = [to_bytes(md)]

    @property
    def root(self) -> bytes:
        """Root v1: the anchor a host is installed with."""
        return self.chain[0]

    def rotate(self, role: str) -> None:
        """Replace ``role``'s key with a new one in root N+1, signed by the old and the new root keys."""
        md = Metadata[Root].from_bytes(self.chain[-1])
        root = md.signed
        old = self.signers[role][0]
        new = CryptoSigner.generate_ed25519()
        root.revoke_key(old.public_key.keyid, role)
        root.add_key(new.public_key, role)
        root.version += 1
        root.expires = self.now + self.expires["root"]
        signers = [self.signers["root"][0]]
        self.signers[role] = [new]
        if role == "root":
            signers.append(new)
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        self.chain.append(to_bytes(md))

    def appliance(
        self,
        out: Path,
        members: dict[str, bytes] | None = None,
        *,
        name: str = "demo",
        version: str = "1.0.0",
        metadata_version: int | None = None,
        tool: bytes | None = None,
        extra_targets: dict[str, TargetFile] | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> Path:
        """Write a signed appliance holding ``members`` (plus appliance.json and the tool) to ``out``."""
        self.version = metadata_version if metadata_version is not None else self.version + 1
        tool = tool if tool is not None else tool_zip()
        with zipfile.ZipFile(io.BytesIO(tool)) as z:
            tool_members = [
                {"name": i.filename, "size": i.file_size, "sha256": hashlib.sha256(z.read(i)).hexdigest()}
                for i in z.infolist()
                if not i.is_dir()
            ]
        manifest = {
            "format": FORMAT,
            "name": name,
            "version": version,
            "description": "",
            "created": self.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "chiron_version": "0",
            "tool_format": "pex",
            "environments": [],
            "images": [],
            "images_shared_bytes": 0,
            "signers": {r: ["file2"] for r in ONLINE_ROLES},
            **(manifest or {}),  # fields a test sets (environments, images, a hostile name...)
        }
        payload = {"appliance.json": canonical_json(manifest), **(members or {})}
        payload[TOOL_MEMBERS_TARGET] = canonical_json(tool_members)
        tool_path = out.with_name(out.name + ".tool.zip")
        tool_path.write_bytes(tool)
        writer = ArchiveWriter(out, SHEBANG)
        try:
            targets: dict[str, TargetFile] = {}
            for member, data in payload.items():
                w = writer.add_bytes(member, data)
                tf = TargetFile(length=w.length, hashes={"sha256": w.sha256}, path=member)
                tf.unrecognized_fields["custom"] = {"kind": "file"}
                targets[member] = tf
            targets[SHEBANG_TARGET] = TargetFile.from_data(SHEBANG_TARGET, SHEBANG, ["sha256"])
            targets[SHEBANG_TARGET].unrecognized_fields["custom"] = {"kind": "shebang"}
            targets[TOOL_TARGET] = TargetFile.from_data(TOOL_TARGET, tool, ["sha256"])
            targets[TOOL_TARGET].unrecognized_fields["custom"] = {"kind": "tool", "format": "pex"}
            targets.update(extra_targets or {})
            metadata = build_repository(
                self.chain,
                {r: self.signers[r] for r in ONLINE_ROLES},
                targets,
                now=self.now,
                expires=self.expires,
                version=self.version,
            )
            for member in sorted(metadata, key=_order):
                writer.add_bytes(member, metadata[member])
            writer.finish(tool_path, "pex")
        except BaseException:
            writer.abort()
            raise
        finally:
            tool_path.unlink(missing_ok=True)
        return out


def _order(name: str) -> tuple[int, str]:
    base = name.removeprefix("metadata/")
    head = base.split(".")[0]
    return (int(head), base) if head.isascii() and head.isdigit() else (1 << 30, base)
