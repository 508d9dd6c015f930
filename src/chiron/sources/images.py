"""Container images: fetch them into one OCI image layout at build time, and load them on the host.

Fetching uses skopeo (the maintained registry client; token and basic auth, plain http on loopback,
docker-daemon: and oci: sources) through chiron's program helper; chiron then re-checks every blob's
sha256 and every manifest's descriptors itself before anything is packed. Blobs shared by several
images are stored once (the layout is content-addressed). On the host, images are loaded into a
Docker Engine through the docker SDK as docker-archive streams built from the layout, and each
loaded image's ID is checked against its config digest, or pushed into a registry with skopeo.

Registry credentials reach skopeo only through an auth file (mode 0600 in a private 0700 temporary
directory, removed afterwards whatever happens), never on its command line, which every local user
can read in ``ps``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chiron.core import proc as _proc
from chiron.core.fs import private_tempdir
from chiron.core.models import ImageRef
from chiron.errors import ArtifactError, EnvironmentProblem, UsageError, VerificationError

PREFIX = "images/"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_INDEX = "application/vnd.oci.image.index.v1+json"
# The variable holding USER:PASSWORD for the enclave registry that images are pushed into.
REGISTRY_CREDENTIALS_ENV = "CHIRON_REGISTRY_CREDENTIALS"

Reader = Callable[[str], bytes]  # a verified appliance member's bytes by name (re-hashed as it is read)


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


def _split_host(ref: str) -> tuple[str | None, str]:
    """(registry host, rest) of a ref; the host is None when the ref names none (Docker Hub)."""
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, ref


def credentials_from_env(variable: str, what: str, *, required: bool) -> tuple[str, str] | None:
    """(user, password) from a variable holding ``USER:PASSWORD``; None when it is unset and not
    ``required``. The value itself never appears in a message."""
    value = os.environ.get(variable)
    if not value:
        if required:
            raise UsageError(f"{what}: environment variable {variable} is not set")
        return None
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise UsageError(f"{what}: environment variable {variable} does not hold USER:PASSWORD")
    return user, password


@contextlib.contextmanager
def auth_file(host: str, credentials: tuple[str, str] | None) -> Iterator[Path | None]:
    """A containers-auth.json for skopeo holding ``credentials`` for ``host``, or None without any.

    The file is created 0600 with O_EXCL in a fresh 0700 directory (in XDG_RUNTIME_DIR, a per-user
    tmpfs, when there is one) and removed with it on exit, success or failure.
    """
    if credentials is None:
        yield None
        return
    user, password = credentials
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    data = json.dumps({"auths": {host: {"auth": token}}}).encode()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    parent = Path(runtime) if runtime and Path(runtime).is_dir() and os.access(runtime, os.W_OK) else None
    with private_tempdir("chiron-auth-", parent) as tmp:
        path = tmp / "auth.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        yield path


def _source(image: ImageRef, authfile: Path | None) -> tuple[str, list[str]]:
    """The skopeo source transport and the source-side flags for one image."""
    flags: list[str] = []
    if image.source == "registry":
        if image.insecure or _is_loopback(image.ref):
            flags.append("--src-tls-verify=false")
        if authfile is not None:
            flags += ["--src-authfile", str(authfile)]
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
        credentials = None
        if image.source == "registry" and image.credentials_env:
            credentials = credentials_from_env(image.credentials_env, f"image {image.ref}", required=True)
        with auth_file(_split_host(image.ref)[0] or "docker.io", credentials) as authfile:
            packed.append(_fetch_one(skopeo, image, layout, authfile))
    check_layout(layout)
    for p in packed:
        if not p.source_digest:
            p.source_digest = next(iter(p.manifests.values()))
        p.layers, p.size = _layers(layout, p)
    return packed


def _fetch_one(skopeo: _proc.Program, image: ImageRef, layout: Path, authfile: Path | None) -> PackedImage:
    src, flags = _source(image, authfile)
    digest: str | None = None
    if "@sha256:" in image.ref:
        digest = image.ref.split("@", 1)[1]  # already pinned by the spec
    elif image.source == "registry":
        raw = _proc.run(skopeo, ["inspect", "--raw", *_inspect_flags(flags), src], what=f"resolving {image.ref}")
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
    return result


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
    """``skopeo copy``'s source flags as ``skopeo inspect`` spells them."""
    return [f.replace("--src-tls-verify", "--tls-verify").replace("--src-authfile", "--authfile") for f in flags]


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


def docker_archive(read: Reader, manifest_digest: str, ref: str) -> tuple[bytes, str]:
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
    path = _split_host(ref)[1]
    return path if "@" in path or _has_tag(path) else f"{path}:latest"


def push_to_registry(
    read: Reader,
    images: list[dict[str, Any]],
    platform: str,
    registry: str,
    credentials_env: str = REGISTRY_CREDENTIALS_ENV,
) -> list[str]:
    """Push each image's ``platform`` manifest into an enclave registry (skopeo), checking the digest
    the registry stored; returns the pushed references.

    ``read(name)`` gives an appliance member's bytes (a verified appliance's ``read``, which re-hashes
    them). ``registry`` is ``HOST[:PORT][/PREFIX]``. Credentials come from the variable
    ``credentials_env`` (``USER:PASSWORD``) through a private auth file; without it skopeo uses its
    own login (``skopeo login``).
    """
    host = registry.split("/", 1)[0]
    if not host or "://" in registry or any(c.isspace() for c in registry):
        raise UsageError(f"--registry {registry!r}: not HOST[:PORT][/PREFIX] (no scheme, no spaces)")
    skopeo = _proc.find_program("skopeo")
    credentials = credentials_from_env(credentials_env, f"registry {host}", required=False)
    pushed = []
    with auth_file(host, credentials) as authfile:
        for image in images:
            digest = image["manifests"].get(platform)
            if digest is None:
                raise EnvironmentProblem(f"image {image['ref']}: no manifest for platform {platform}")
            pushed.append(_push_one(skopeo, read, image["ref"], digest, registry, authfile))
    return pushed


def _push_one(skopeo: _proc.Program, read: Reader, ref: str, digest: str, registry: str, authfile: Path | None) -> str:
    with private_tempdir("chiron-push-") as layout:
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
        repository = _repository(ref)
        if "@" in repository:  # pinned by the source's digest: address the manifest actually pushed
            repository = f"{repository.split('@', 1)[0]}@{digest}"
        target = f"{registry.rstrip('/')}/{repository}"
        flags = ["--dest-tls-verify=false"] if _is_loopback(registry) else []
        if authfile is not None:
            flags += ["--dest-authfile", str(authfile)]
        digest_file = layout / "pushed.digest"
        args = ["copy", "--quiet", "--preserve-digests", *flags, "--digestfile", str(digest_file)]
        _proc.run(skopeo, [*args, f"oci:{layout}:image", f"docker://{target}"], what=f"pushing {ref}", timeout=3600)
        got = digest_file.read_text().strip()
    if got != digest:
        raise VerificationError([f"image {ref}: the registry stored {got}, expected {digest}"])
    return target


def load_into_engine(read: Reader, images: list[dict[str, Any]], platform: str) -> list[str]:
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
