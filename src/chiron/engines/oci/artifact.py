"""The OCI artifact form of an appliance (docs/oci.md): one blob per region of the file, in file order.

The regions are the delta format's extents (archive.delta.extents): the shebang, each payload member,
the index with its footer, the tool zip. Concatenating the blobs in the order of the manifest's
``layers`` gives back the appliance byte for byte; the config blob names its size and sha256. Nothing
here is trusted on the pulling side: a wrong manifest or config can only assemble a file that fails
the whole-file hash or TUF verification, which every pull and every host runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from chiron.archive.layout import FORMAT, INDEX_EXTENT, SHEBANG_TARGET, TOOL_TARGET
from chiron.core.text import canonical_json
from chiron.errors import UsageError, VerificationError
from chiron.sources.oci import EMPTY, EMPTY_JSON, MANIFEST, descriptor

ARTIFACT_TYPE = "application/vnd.chiron.appliance.v1"
CONFIG_TYPE = "application/vnd.chiron.appliance.config.v1+json"
REGION_PREFIX = "application/vnd.chiron.appliance."
SHEBANG_TYPE = REGION_PREFIX + "shebang.v1"
MEMBER_TYPE = REGION_PREFIX + "member.v1"
INDEX_TYPE = REGION_PREFIX + "index.v1"
TOOL_TYPE = REGION_PREFIX + "tool.v1+zip"
SIGNATURE_TYPE = "application/vnd.chiron.appliance.signature.v1"
SSHSIG_TYPE = "application/vnd.chiron.sshsig.v1"
SBOM_TYPE = "application/vnd.cyclonedx+json"
TITLE = "org.opencontainers.image.title"
VERSION = "org.opencontainers.image.version"
CREATED = "org.opencontainers.image.created"
ROOT_SHA256 = "vnd.chiron.root.sha256"
METADATA_VERSION = "vnd.chiron.metadata.version"
MAX_REGIONS = 1 << 20
MAX_CONFIG = 64 << 10
MAX_SIGNATURE = 64 << 10
SBOM_MEMBER = "sbom/cyclonedx.json"


@dataclass(frozen=True)
class Region:
    name: str
    digest: str
    size: int


@dataclass(frozen=True)
class Artifact:
    """An appliance as a registry holds it, checked for shape (not for trust)."""

    name: str
    version: str
    size: int
    sha256: str
    regions: tuple[Region, ...]

    def unique(self) -> dict[str, int]:
        """digest -> size, each blob once (two members with the same bytes share a blob)."""
        return {r.digest: r.size for r in self.regions}


def _media_type(name: str) -> str:
    return {SHEBANG_TARGET: SHEBANG_TYPE, INDEX_EXTENT: INDEX_TYPE, TOOL_TARGET: TOOL_TYPE}.get(name, MEMBER_TYPE)


def config_bytes(info: dict[str, Any], size: int, sha256: str) -> bytes:
    """The config blob: what the file is (canonical JSON, so that the same appliance gives the same one)."""
    return canonical_json(
        {
            "format": FORMAT,
            "name": info["name"],
            "version": info["version"],
            "created": info["created"],
            "tool_format": info["tool_format"],
            "size": size,
            "sha256": sha256,
        }
    )


def manifest_bytes(regions: list[tuple[str, int, int, str]], config: bytes, info: dict[str, Any]) -> bytes:
    """The appliance's manifest: one layer per region ``(name, offset, length, sha256)`` in file order."""
    layers = [
        {"mediaType": _media_type(name), "digest": f"sha256:{sha}", "size": length, "annotations": {TITLE: name}}
        for name, _off, length, sha in regions
    ]
    annotations = {
        TITLE: info["name"],
        VERSION: info["version"],
        CREATED: info["created"],
        ROOT_SHA256: info["root_sha256"],
        METADATA_VERSION: str(info["metadata_version"]),
    }
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": descriptor(CONFIG_TYPE, config),
            "layers": layers,
            "annotations": annotations,
        }
    )


def referrer_bytes(
    subject: tuple[str, int], artifact_type: str, layer: dict[str, Any], annotations: dict[str, str]
) -> bytes:
    """A manifest attached to the appliance's (``subject``: digest, size): the signature or the SBOM."""
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor(EMPTY, EMPTY_JSON),
            "layers": [layer],
            "subject": {"mediaType": MANIFEST, "digest": subject[0], "size": subject[1]},
            "annotations": annotations,
        }
    )


def tag_for(version: str) -> str:
    """A tag from an appliance version (``+`` is not allowed in tags: ``1.0+local`` -> ``1.0_local``)."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", version)[:128]
    return tag if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", tag) else f"v{tag}"[:128]


def parse(manifest: dict[str, Any], config: bytes, where: str) -> Artifact:
    """The artifact a pulled manifest and its config describe; a VerificationError for anything that
    does not have chiron's shape, a UsageError for an artifact of another kind."""
    kind = manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType")
    if kind != ARTIFACT_TYPE and (manifest.get("config") or {}).get("mediaType") != CONFIG_TYPE:
        raise UsageError(
            f"{where}: is not a chiron appliance (artifact type {kind!r})",
            hint="name an appliance published with chiron publish; container images are pulled with docker or skopeo",
        )
    try:
        info = json.loads(config)
        layers = manifest["layers"]
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"config format is not {FORMAT}")
        if not isinstance(layers, list) or not 0 < len(layers) <= MAX_REGIONS:
            raise ValueError("no layers, or too many")
        regions = tuple(_region(layer, n) for n, layer in enumerate(layers))
        size, sha256 = int(info["size"]), str(info["sha256"])
        if sum(r.size for r in regions) != size or not re.fullmatch(r"[a-f0-9]{64}", sha256):
            raise ValueError("the layers' sizes do not add up to the appliance's size, or no sha256")
        name, version = info["name"], info["version"]
        if not all(isinstance(v, str) and 0 < len(v) <= 256 and v.isprintable() for v in (name, version)):
            raise ValueError("the config's name or version is not a short printable string")
        return Artifact(name, version, size, sha256, regions)
    except (ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise VerificationError([f"{where}: malformed chiron artifact: {exc}"]) from None


def _region(layer: Any, n: int) -> Region:
    if not isinstance(layer, dict) or not str(layer.get("mediaType", "")).startswith(REGION_PREFIX):
        raise ValueError(f"layer {n} is not a region of an appliance")
    digest, size = str(layer.get("digest", "")), layer.get("size")
    if not re.fullmatch(r"sha256:[a-f0-9]{64}", digest) or not isinstance(size, int) or size < 0:
        raise ValueError(f"layer {n} has no valid sha256 digest and size")
    title = (layer.get("annotations") or {}).get(TITLE)
    # Only a name that is safe to print (it comes from the registry, unverified) names the region.
    safe = isinstance(title, str) and 0 < len(title) <= 1024 and title.isprintable()
    return Region(str(title) if safe else f"layer {n}", digest, size)


def config_digest(manifest: dict[str, Any], where: str) -> tuple[str, int]:
    config = manifest.get("config")
    if not isinstance(config, dict) or not re.fullmatch(r"sha256:[a-f0-9]{64}", str(config.get("digest", ""))):
        raise VerificationError([f"{where}: the manifest has no valid config descriptor"])
    size = config.get("size")
    if not isinstance(size, int) or not 0 <= size <= MAX_CONFIG:
        raise VerificationError([f"{where}: the config blob's size {size!r} is not plausible"])
    return str(config["digest"]), size
