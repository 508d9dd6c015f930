"""Container images: fetch them into one OCI image layout at build time, and load them on the host.

Fetching uses skopeo (the maintained registry client; token and basic auth, plain http on loopback,
docker-daemon: and oci: sources) through chiron's program helper; chiron then re-checks every blob's
sha256 and every manifest's descriptors itself before anything is packed. Blobs shared by several
images are stored once (the layout is content-addressed). On the host, images are loaded into a
Docker Engine through the docker SDK as docker-archive streams built from the layout, and each
loaded image's ID is checked against its config digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core import proc as _proc
from chiron.core.models import ImageRef
from chiron.errors import ArtifactError, EnvironmentProblem, UsageError, VerificationError

PREFIX = "images/"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass
class PackedImage:
    ref: str
    source_digest: str  # what the source served for the ref (recorded in appliance.json)
    manifests: dict[str, str]  # platform -> stored OCI manifest digest
    size: int = 0
    layers: list[str] = field(default_factory=list)
    sizes: list[tuple[str, int]] = field(default_factory=list)  # (digest, bytes) of each stored blob

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "digest": self.source_digest,
            "platforms": sorted(self.manifests),
            "manifests": self.manifests,
            "size": self.size,
        }


def _is_loopback(ref: str) -> bool:
    """Whether the ref's registry host is exactly a loopback name (plain http is allowed there)."""
    host = ref.split("/", 1)[0]
    if host.startswith("["):
        return host.split("]", 1)[0] == "[::1"
    return host.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")


def _source(image: ImageRef) -> tuple[str, list[str]]:
    """The skopeo source transport and the source-side flags for one image."""
    flags: list[str] = []
    if image.source == "registry":
        if image.insecure or _is_loopback(image.ref):
            flags.append("--src-tls-verify=false")
        if image.credentials_env:
            creds = os.environ.get(image.credentials_env)
            if not creds:
                raise UsageError(f"image {image.ref}: environment variable {image.credentials_env} is not set")
            flags += ["--src-creds", creds]
        return f"docker://{image.ref}", flags
    if image.source == "docker":
        return f"docker-daemon:{image.ref}", flags
    if image.path is None:
        raise UsageError(f"image {image.ref}: source oci needs path = an OCI layout directory or archive")
    path = Path(image.path)
    kind = "oci-archive" if path.is_file() else "oci"
    return f"{kind}:{path}:{image.ref}" if kind == "oci" else f"{kind}:{path}", flags


def fetch(images: list[ImageRef], layout: Path) -> list[PackedImage]:
    """Copy every image (each requested platform) into the OCI layout ``layout``; re-check it all."""
    if not images:
        return []
    skopeo = _proc.find_program("skopeo")
    packed: list[PackedImage] = []
    for image in images:
        src, flags = _source(image)
        digest: str | None = None
        if "@sha256:" in image.ref:
            digest = image.ref.split("@", 1)[1]  # already pinned by the spec
        elif image.source == "registry":
            if digest is None:
                raw = _proc.run(
                    skopeo, ["inspect", "--raw", *_inspect_flags(flags), src], what=f"resolving {image.ref}"
                )
                digest = "sha256:" + hashlib.sha256(raw.stdout).hexdigest()
            # Copy by digest: a tag that moves between resolving and copying cannot slip in.
            src = f"docker://{image.ref.rsplit(':', 1)[0] if _has_tag(image.ref) else image.ref}@{digest}"
        result = PackedImage(ref=image.ref, source_digest=digest or "", manifests={})
        for platform in image.platforms or ["linux/amd64"]:
            os_, _, arch = platform.partition("/")
            name = f"{image.ref}@{platform}"
            args = ["copy", "--quiet", *flags, src, f"oci:{layout}:{name}"]
            if image.source == "registry":
                args = ["--override-os", os_, "--override-arch", arch, *args]
            _proc.run(skopeo, args, what=f"fetching image {image.ref} ({platform})", timeout=3600)
            result.manifests[platform] = _manifest_for(layout, name)
            got = _platform_of(layout, result.manifests[platform])
            if got != platform:
                # skopeo falls back to the only image a single-platform source has: refuse, don't mislabel.
                raise ArtifactError(
                    f"image {image.ref}: has no {platform} variant (the source provides {got})",
                    hint="list only platforms the image is built for in [[images]].platforms",
                )
        packed.append(result)
    check_layout(layout)
    for p in packed:
        if not p.source_digest:
            p.source_digest = next(iter(p.manifests.values()))
        p.layers, p.size = _layers(layout, p)
    return packed


def from_layout(layout: Path, recorded: list[dict[str, Any]]) -> list[PackedImage]:
    """Images already in an OCI layout (e.g. unpacked from an appliance for a rebuild), as recorded."""
    check_layout(layout)
    packed = []
    for entry in recorded:
        image = PackedImage(ref=entry["ref"], source_digest=entry["digest"], manifests=dict(entry["manifests"]))
        image.layers, image.size = _layers(layout, image)
        packed.append(image)
    return packed


def _platform_of(layout: Path, manifest_digest: str) -> str:
    manifest = json.loads(_blob(layout, manifest_digest).read_bytes())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    return f"{config.get('os', '?')}/{config.get('architecture', '?')}"


def _has_tag(ref: str) -> bool:
    return ":" in ref.rsplit("/", 1)[-1]


def _inspect_flags(flags: list[str]) -> list[str]:
    out = []
    for f in flags:
        out.append(f.replace("--src-tls-verify", "--tls-verify").replace("--src-creds", "--creds"))
    return out


def _manifest_for(layout: Path, name: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    for m in index.get("manifests", []):
        if (m.get("annotations") or {}).get(REF_ANNOTATION) == name:
            return str(m["digest"])
    raise ArtifactError(f"image {name}: skopeo wrote no manifest for it")


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64:
        raise ArtifactError(f"{layout}: unsupported digest {digest}")
    return layout / "blobs" / "sha256" / hexdigest


def check_layout(layout: Path) -> None:
    """Every blob's bytes hash to its name; every manifest's descriptors exist with the right size."""
    for blob in (layout / "blobs" / "sha256").iterdir():
        h = hashlib.sha256()
        with blob.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != blob.name:
            raise ArtifactError(f"image blob {blob.name}: its bytes hash to {h.hexdigest()} (corrupt download)")
    index = json.loads((layout / "index.json").read_text())
    for m in index.get("manifests", []):
        manifest = json.loads(_blob(layout, m["digest"]).read_bytes())
        for d in [manifest["config"], *manifest.get("layers", [])]:
            path = _blob(layout, d["digest"])
            if not path.is_file() or path.stat().st_size != d["size"]:
                raise ArtifactError(f"image manifest {m['digest']}: blob {d['digest']} is missing or the wrong size")


def _layers(layout: Path, image: PackedImage) -> tuple[list[str], int]:
    digests: list[str] = []
    for manifest_digest in image.manifests.values():
        manifest = json.loads(_blob(layout, manifest_digest).read_bytes())
        digests += [manifest_digest, manifest["config"]["digest"], *(d["digest"] for d in manifest["layers"])]
    unique = list(dict.fromkeys(digests))
    image.sizes = [(d, _blob(layout, d).stat().st_size) for d in unique]
    return unique, sum(s for _d, s in image.sizes)


def canonical_index(images: list[PackedImage]) -> bytes:
    """The layout's index.json as chiron packs it: one entry per image and platform, sorted."""
    manifests = []
    for image in sorted(images, key=lambda i: i.ref):
        for platform, digest in sorted(image.manifests.items()):
            os_, _, arch = platform.partition("/")
            manifests.append(
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": digest,
                    "size": next(s for d, s in image.sizes if d == digest),
                    "platform": {"os": os_, "architecture": arch},
                    "annotations": {REF_ANNOTATION: image.ref},
                }
            )
    return json.dumps({"schemaVersion": 2, "mediaType": _INDEX, "manifests": manifests}, sort_keys=True).encode()


def members(layout: Path, images: list[PackedImage]) -> Iterator[tuple[str, Path | bytes]]:
    """Archive members for the images, in a fixed order: layout marker, index, each blob once."""
    if not images:
        return
    yield PREFIX + "oci-layout", b'{"imageLayoutVersion":"1.0.0"}'
    yield PREFIX + "index.json", canonical_index(images)
    for digest in sorted({d for i in images for d in i.layers}):
        yield f"{PREFIX}blobs/sha256/{digest.partition(':')[2]}", _blob(layout, digest)


# ---------------------------------------------------------------- host side


def docker_archive(read: Any, manifest_digest: str, ref: str) -> tuple[bytes, str]:
    """A docker-archive tar (what the Engine's load API takes) for one stored manifest.

    ``read(name)`` returns a verified archive member. Returns the tar and the expected image ID.
    """
    manifest = json.loads(read(f"{PREFIX}blobs/sha256/{manifest_digest.partition(':')[2]}"))
    config = manifest["config"]["digest"]
    files = {f"{config.partition(':')[2]}.json": read(f"{PREFIX}blobs/sha256/{config.partition(':')[2]}")}
    layers = []
    for d in manifest["layers"]:
        name = f"{d['digest'].partition(':')[2]}/layer.tar"
        files[name] = read(f"{PREFIX}blobs/sha256/{d['digest'].partition(':')[2]}")
        layers.append(name)
    # The Engine takes name:tag here; an image pinned only by digest is loaded by its ID, untagged.
    tags = [ref] if "@" not in ref and _has_tag(ref) else ([f"{ref}:latest"] if "@" not in ref else [])
    files["manifest.json"] = json.dumps(
        [{"Config": f"{config.partition(':')[2]}.json", "RepoTags": tags, "Layers": layers}]
    ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), config


def _repository(ref: str) -> str:
    """The repository path and tag of a ref without its registry host (``team/app:1``)."""
    first, _, rest = ref.partition("/")
    has_host = rest and ("." in first or ":" in first or first == "localhost")
    path = rest if has_host else ref
    return path if "@" in path or _has_tag(path) else f"{path}:latest"


def push_to_registry(read: Any, images: list[dict[str, Any]], platform: str, registry: str) -> list[str]:
    """Push each image's ``platform`` manifest into an enclave registry (skopeo), checking the digest
    the registry stored; returns the pushed references."""
    skopeo = _proc.find_program("skopeo")
    pushed = []
    for image in images:
        digest = image["manifests"].get(platform)
        if digest is None:
            raise EnvironmentProblem(f"image {image['ref']}: no manifest for platform {platform}")
        with tempfile.TemporaryDirectory(prefix="chiron-push-") as tmp_s:
            layout = Path(tmp_s)
            (layout / "oci-layout").write_bytes(read(PREFIX + "oci-layout"))
            blobs = layout / "blobs" / "sha256"
            blobs.mkdir(parents=True)
            manifest_bytes = read(f"{PREFIX}blobs/sha256/{digest.partition(':')[2]}")
            manifest = json.loads(manifest_bytes)
            for d in [digest, manifest["config"]["digest"], *(x["digest"] for x in manifest["layers"])]:
                hexdigest = d.partition(":")[2]
                (blobs / hexdigest).write_bytes(read(f"{PREFIX}blobs/sha256/{hexdigest}"))
            entry = {
                "mediaType": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
                "digest": digest,
                "size": len(manifest_bytes),
                "annotations": {REF_ANNOTATION: "image"},
            }
            (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
            repository = _repository(image["ref"])
            if "@" in repository:  # pinned by the source's digest: address the manifest actually pushed
                repository = f"{repository.split('@', 1)[0]}@{digest}"
            target = f"{registry.rstrip('/')}/{repository}"
            flags = ["--dest-tls-verify=false"] if _is_loopback(registry) else []
            digest_file = layout / "pushed.digest"
            _proc.run(
                skopeo,
                [
                    "copy",
                    "--quiet",
                    "--preserve-digests",
                    *flags,
                    "--digestfile",
                    str(digest_file),
                    f"oci:{layout}:image",
                    f"docker://{target}",
                ],
                what=f"pushing {image['ref']}",
                timeout=3600,
            )
            got = digest_file.read_text().strip()
            if got != digest:
                raise VerificationError([f"image {image['ref']}: the registry stored {got}, expected {digest}"])
        pushed.append(target)
    return pushed


def load_into_engine(read: Any, images: list[dict[str, Any]], platform: str) -> list[str]:
    """Load each image's manifest for ``platform`` into the Docker Engine; returns the loaded refs."""
    try:
        import docker
    except ImportError:
        raise EnvironmentProblem("the docker SDK is not installed, so images cannot be loaded") from None
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        raise EnvironmentProblem(
            f"no Docker Engine is reachable ({type(exc).__name__}: {str(exc)[:120]})",
            hint="start dockerd or set DOCKER_HOST; or install with --images skip",
        ) from None
    loaded = []
    for image in images:
        digest = image["manifests"].get(platform)
        if digest is None:
            raise EnvironmentProblem(f"image {image['ref']}: no manifest for this host's platform {platform}")
        data, config = docker_archive(read, digest, image["ref"])
        try:
            result = client.images.load(data)
        except Exception as exc:  # the SDK's APIError / ImageLoadError: the engine refused it
            raise EnvironmentProblem(f"image {image['ref']}: the Docker Engine refused to load it: {exc}") from None
        ids = {i.id for i in result}
        if config not in ids:
            # Integrity, not environment: never downgraded to a notice.
            raise VerificationError([f"image {image['ref']}: the Engine loaded {sorted(ids)}, expected {config}"])
        loaded.append(image["ref"])
    return loaded
