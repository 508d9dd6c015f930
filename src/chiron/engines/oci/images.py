"""The images an appliance carries, pushed into the registry as ordinary images at publish.

Their blobs are already in the registry as regions of the appliance, so each is mounted from the
appliance's repository (distribution's cross-repository mount) rather than sent again; a registry that
declines the mount gets the bytes, streamed from the verified appliance. Each platform's manifest is
pushed by its digest, byte for byte as the appliance holds it, so ``docker pull HOST/REPO@DIGEST``
gets exactly the signed image; a tagged ref is tagged too (an OCI index when it has several platforms).
"""

from __future__ import annotations

import json
from typing import Any

from chiron.core.text import canonical_json
from chiron.engines.verify import VerifiedAppliance
from chiron.errors import UsageError
from chiron.sources.oci import INDEX, MANIFEST, Registry, open_region

BLOBS = "images/blobs/sha256/"


def image_repository(ref: str, prefix: str) -> tuple[str, str | None]:
    """The repository (under ``prefix``) and tag an image ref is pushed to: ``reg:5000/team/app:1``
    -> (``PREFIX/team/app``, ``1``); a ref pinned by digest gets no tag, one with neither ``latest``."""
    first, sep, rest = ref.partition("/")
    path = rest if sep and ("." in first or ":" in first or first == "localhost") else ref
    path, _at, digest = path.partition("@")
    name, colon, tag = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    repository = "/".join(p for p in (prefix.strip("/"), name if colon else path) if p)
    return repository, (tag if colon else (None if digest else "latest"))


def push_images(registry: Registry, repository: str, appliance: VerifiedAppliance, prefix: str) -> list[str]:
    """Push every image (each platform) the verified ``appliance`` carries; the references pushed."""
    pushed: list[str] = []
    for image in appliance.manifest.get("images") or []:
        repo, tag = image_repository(str(image["ref"]), prefix)
        platforms: list[dict[str, Any]] = []
        for platform, digest in sorted(dict(image["manifests"]).items()):
            raw = appliance.read(BLOBS + digest.partition(":")[2])
            manifest = json.loads(raw)
            for d in [manifest["config"], *manifest.get("layers", [])]:
                _mount(registry, repo, str(d["digest"]), repository, appliance)
            media = str(manifest.get("mediaType") or MANIFEST)
            registry.put_manifest(repo, digest, raw, media)
            pushed.append(f"{registry.host}/{repo}@{digest}")
            os_, _, arch = platform.partition("/")
            entry = {"mediaType": media, "digest": digest, "size": len(raw)}
            platforms.append({**entry, "platform": {"os": os_, "architecture": arch}, "raw": raw})
        if tag and platforms:
            if len(platforms) == 1:
                registry.put_manifest(repo, tag, platforms[0]["raw"], platforms[0]["mediaType"])
            else:
                entries = [{k: v for k, v in p.items() if k != "raw"} for p in platforms]
                index = canonical_json({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries})
                registry.put_manifest(repo, tag, index, INDEX)
            pushed.append(f"{registry.host}/{repo}:{tag}")
    return pushed


def _mount(registry: Registry, repo: str, digest: str, source: str, appliance: VerifiedAppliance) -> None:
    name = BLOBS + digest.partition(":")[2]
    member = appliance.layout.member(name)
    if member is None:
        raise UsageError(f"image blob {digest}: not in the appliance")
    registry.push_blob(repo, digest, open_region(appliance.path, member.offset, member.length), mount_from=source)
