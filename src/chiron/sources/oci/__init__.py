"""OCI registries (the distribution API): one client for publishing and pulling appliances.

oras-py does the registry plumbing: reference URLs, the bearer-token flow, credentials from a
Docker/Podman auth file and its credential helpers, upload sessions, tag listing. chiron adds what an
untrusted registry calls for: every blob is hashed as it arrives and refused, by name, when it does
not match its digest; manifests are read with a size bound and checked against the digest asked for;
downloads resume from a content-addressed partial file; referrers come from the referrers API or,
where the registry lacks it (distribution 2.8), from the OCI tag-schema fallback; and every failure
is one line naming the registry and what to do. Credentials are only ever read from a file, never
taken from a command line; TLS is always verified (``--ca-file`` for a site CA), and plain HTTP is
used only on loopback or with ``--insecure``.
"""

from chiron.sources.oci.client import Registry, open_region, opened
from chiron.sources.oci.ref import (
    EMPTY,
    EMPTY_JSON,
    INDEX,
    MANIFEST,
    Access,
    Manifest,
    Reference,
    descriptor,
    digest_of,
    fallback_tag,
    is_loopback,
    is_oci,
    parse_reference,
)

__all__ = [
    "EMPTY",
    "EMPTY_JSON",
    "INDEX",
    "MANIFEST",
    "Access",
    "Manifest",
    "Reference",
    "Registry",
    "descriptor",
    "digest_of",
    "fallback_tag",
    "is_loopback",
    "is_oci",
    "open_region",
    "opened",
    "parse_reference",
]
