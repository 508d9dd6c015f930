"""What a wheel says about itself: its ``*.dist-info/METADATA`` (core metadata) and the licence in it.

Used by ``diff`` (licence changes) and by the SBOM (licences and summaries of the packed wheels).
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import zipfile
from email.message import Message
from pathlib import Path
from typing import IO

from chiron.errors import ArtifactError

_MAX_METADATA = 16 << 20  # a METADATA file this large is not metadata; refuse to inflate it


def read_metadata(data: bytes, where: str = "wheel") -> Message:
    """The core metadata of a wheel given as bytes; ``where`` names the wheel in errors."""
    return _read(io.BytesIO(data), where)


def read_metadata_file(path: Path) -> Message:
    """The core metadata of a wheel file, read without loading the whole wheel into memory."""
    with path.open("rb") as f:
        return _read(f, path.name)


def core_metadata(source: IO[bytes], where: str = "wheel") -> bytes:
    """The raw bytes of a wheel's top-level ``*.dist-info/METADATA`` (what PEP 658 serves beside it).

    ``source`` is a seekable binary stream over the wheel; only the central directory and that one
    entry are read, so a large wheel is not loaded into memory.
    """
    try:
        with zipfile.ZipFile(source) as z:
            # Only the top-level .dist-info counts: vendored copies deeper down describe other projects.
            info = next(
                (i for i in z.infolist() if i.filename.count("/") == 1 and i.filename.endswith(".dist-info/METADATA")),
                None,
            )
            if info is None:
                raise ArtifactError(f"{where}: has no *.dist-info/METADATA (not a valid wheel)")
            if info.file_size > _MAX_METADATA:
                raise ArtifactError(f"{where}: {info.filename} is {info.file_size} bytes, too large for metadata")
            return z.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise ArtifactError(f"{where}: cannot read it as a wheel (zip): {exc}") from None


def parse_metadata(raw: bytes) -> Message:
    """Core metadata bytes parsed as headers (the long description body is not needed)."""
    # Core metadata is UTF-8. Decoding first (not BytesParser) keeps non-ASCII values (authors,
    # summaries) plain strings under compat32.
    text = raw.decode("utf-8", errors="replace")
    return email.parser.Parser(policy=email.policy.compat32).parsestr(text, headersonly=True)


def _read(source: IO[bytes], where: str) -> Message:
    return parse_metadata(core_metadata(source, where))


def _header(meta: Message, name: str) -> str:
    return str(meta.get(name) or "").strip()


def licence_expression(meta: Message) -> str:
    """The ``License-Expression`` field (core metadata 2.4, an SPDX expression), or ``""``."""
    return _header(meta, "License-Expression")


def licence(meta: Message) -> str:
    """The licence a wheel declares: License-Expression, else License, else the licence classifiers.

    ``License`` often holds a whole licence text; only a short single line is taken as a name.
    """
    expression = licence_expression(meta)
    if expression:
        return expression
    text = _header(meta, "License")
    if text and "\n" not in text and len(text) < 80:
        return text
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return ", ".join(classifiers)


def summary(meta: Message) -> str:
    """The one-line ``Summary`` field, or ``""``."""
    return " ".join(_header(meta, "Summary").split())
