"""The appliance's software bill of materials: CycloneDX 1.6 JSON listing its Python packages and
container images, packed as the signed member ``sbom/cyclonedx.json``.

The SBOM is part of the appliance, so it must be as reproducible as the rest of it (``rebuild``
compares it byte for byte): nothing in it comes from a random source, and the only time in it is the
manifest's ``created``. Every component's bom-ref is its purl, and the serial number is a UUID
derived from the document's own content.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chiron import __version__
from chiron.core.clock import parse_iso
from chiron.core.text import parse_json
from chiron.errors import UsageError
from chiron.sources import wheelmeta as _wheelmeta

if TYPE_CHECKING:
    from cyclonedx.model.component import Component
    from cyclonedx.model.license import License

    from chiron.sources.images import PackedImage
    from chiron.sources.lock import Artifact, Lock, LockedPackage

MEMBER = "sbom/cyclonedx.json"
# Serial numbers are uuid5(_NAMESPACE, sha256 of the document with a nil serial number).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://chiron.invalid/sbom")
_APPLIANCE_REF = "chiron-appliance"


def make(manifest: dict[str, Any], lock: Lock, wheels: dict[str, Path], images: list[PackedImage]) -> bytes:
    """The CycloneDX JSON of an appliance: one component per locked package and per image.

    ``wheels`` maps each artifact's file name to a local copy (read for its METADATA). The same
    inputs always give the same bytes.
    """
    # Imported here: only building needs the library; inspect reads the JSON with the stdlib.
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository
    from cyclonedx.output.json import JsonV1Dot6

    components = [_package(pkg, lock, wheels) for pkg in lock.packages]
    components += [_image(image) for image in images]
    refs = [str(c.bom_ref) for c in components]
    if len(set(refs)) != len(refs):
        # The library would give duplicates random bom-refs, and the SBOM would not be reproducible.
        dupes = sorted(r for r, n in Counter(refs).items() if n > 1)
        raise UsageError(
            f"SBOM: more than one component is {', '.join(dupes)}", hint="list each package and image once"
        )
    appliance = Component(
        type=ComponentType.APPLICATION,
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        description=manifest.get("description") or None,
        bom_ref=_APPLIANCE_REF,
    )
    tool = Component(
        type=ComponentType.APPLICATION, name="chiron", version=__version__, bom_ref=f"chiron-tool@{__version__}"
    )
    created = parse_iso(str(manifest["created"]))
    bom = Bom(
        components=components,
        metadata=BomMetaData(component=appliance, tools=ToolRepository(components=[tool]), timestamp=created),
        serial_number=uuid.UUID(int=0),
    )
    # The appliance contains every component (no package-to-package graph: the lock is flat).
    bom.register_dependency(appliance, components)
    bom.serial_number = uuid.uuid5(_NAMESPACE, hashlib.sha256(_render(JsonV1Dot6(bom).output_as_string())).hexdigest())
    return _render(JsonV1Dot6(bom).output_as_string())


def _render(text: str) -> bytes:
    """Indented JSON with the format fields first (the library appends them last), for human readers."""
    doc = json.loads(text)
    head = {k: doc.pop(k) for k in ("$schema", "bomFormat", "specVersion", "serialNumber", "version") if k in doc}
    return (json.dumps({**head, **doc}, indent=2, ensure_ascii=False) + "\n").encode()


def _package(pkg: LockedPackage, lock: Lock, wheels: dict[str, Path]) -> Component:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    files: list[Artifact] = sorted((a for a in pkg.artifacts.values() if a.filename in wheels), key=_filename)
    # Which environments install this package: the same selection the requirements files are made from.
    envs = sorted(
        env
        for env, chosen in lock.selection.items()
        if pkg.name in chosen and chosen[pkg.name].filename in pkg.artifacts
    )
    first = next((a for a in files if a.is_wheel), None)
    meta = _wheelmeta.read_metadata_file(wheels[first.filename]) if first else None
    purl = PackageURL(type="pypi", name=pkg.name, version=pkg.version)
    return Component(
        type=ComponentType.LIBRARY,
        name=pkg.name,
        version=pkg.version,
        description=(_wheelmeta.summary(meta) or None) if meta else None,
        purl=purl,
        bom_ref=purl.to_string(),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=a.sha256) for a in files],
        licenses=_licences(meta) if meta else [],
        properties=[Property(name="chiron:environments", value=",".join(envs))]
        + [Property(name="chiron:file", value=a.filename) for a in files],
    )


def _filename(a: Artifact) -> str:
    return a.filename


def _licences(meta: Message) -> list[License]:
    """License-Expression as an SPDX expression when it parses; a known SPDX id; else a licence name."""
    from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
    from cyclonedx.spdx import fixup_id, is_expression

    expression = _wheelmeta.licence_expression(meta)
    if expression:
        return [LicenseExpression(expression) if is_expression(expression) else DisjunctiveLicense(name=expression)]
    text = _wheelmeta.licence(meta)
    if not text:
        return []
    spdx_id = fixup_id(text)  # the legacy License field often holds just an id such as "MIT"
    return [DisjunctiveLicense(id=spdx_id) if spdx_id else DisjunctiveLicense(name=text)]


def _image(image: PackedImage) -> Component:
    from cyclonedx.model import Property
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    repository, tag = _split_ref(image.ref)
    qualifiers = {"repository_url": repository, **({"tag": tag} if tag else {})}
    # purl's oci type: the name is the last path segment, lower case; the version is the digest.
    purl = PackageURL(
        type="oci", name=repository.rsplit("/", 1)[-1].lower(), version=image.source_digest, qualifiers=qualifiers
    )
    return Component(
        type=ComponentType.CONTAINER,
        name=image.ref,
        version=image.source_digest,
        purl=purl,
        bom_ref=purl.to_string(),
        properties=[Property(name=f"chiron:manifest:{p}", value=d) for p, d in sorted(image.manifests.items())],
    )


def _split_ref(ref: str) -> tuple[str, str]:
    """``host/path:tag@digest`` -> (``host/path``, ``tag``); the registry host keeps its port."""
    name = ref.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    path, _, tag = last.partition(":")
    return (f"{head}/{path}" if head else path), tag


def _components(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The document and its components; ValueError (naming the SBOM) for anything not shaped like one."""
    doc = parse_json(data, MEMBER)
    components = (doc.get("components") or []) if isinstance(doc, dict) else None
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        raise ValueError(f"{MEMBER}: not a CycloneDX document (components is not a list of objects)")
    return doc, components


def _library_licence(c: dict[str, Any]) -> str:
    entries = c.get("licenses") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{MEMBER}: a component's licenses is not a list of objects")
    return _licence_label(entries)


def summary(data: bytes) -> dict[str, Any]:
    """What ``inspect`` shows of an SBOM: spec version, components by type, licences of the packages.

    inspect reads it without verifying: ValueError (naming the SBOM) for anything not shaped like one.
    """
    doc, components = _components(data)
    by_type = Counter(str(c.get("type", "?")) for c in components)
    licences: Counter[str] = Counter()
    for c in components:
        if c.get("type") == "library":
            licences[_library_licence(c)] += 1
    return {
        "spec_version": str(doc.get("specVersion", "")),
        "components": {t: by_type[t] for t in sorted(by_type)},
        "licences": {name: licences[name] for name in sorted(licences)},
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def licences(data: bytes) -> dict[tuple[str, str], str]:
    """The licence of each package (library component) by (name, version), labelled as ``summary`` does;
    ValueError (naming the SBOM) for anything not shaped like one."""
    _doc, components = _components(data)
    return {
        (str(c.get("name", "")), str(c.get("version", ""))): _library_licence(c)
        for c in components
        if c.get("type") == "library"
    }


def _licence_label(entries: list[dict[str, Any]]) -> str:
    labels = []
    for e in entries:
        if "expression" in e:
            labels.append(str(e["expression"]))
        else:
            lic = e.get("license") or {}
            if isinstance(lic, dict):
                labels.append(str(lic.get("id") or lic.get("name") or ""))
    return " AND ".join(x for x in labels if x) or "unknown"
