"""What is signed covers the archive: every signed target is present, and every region but the
TUF metadata is a signed target of its own kind and length (a payload member can never stand in for
the shebang or the tool zip); and a large target's signed piece hashes. verify and the media
engines (volumes) check by these same rules."""

from __future__ import annotations

from chiron.archive.layout import TOOL_TARGET, Layout, Region
from chiron.core.text import plain
from chiron.trust.client import TrustedTarget

# The kind a target must be signed as for each kind of region: a payload member can never stand in
# for the shebang or the tool zip, nor they for a member, whatever the names say.
_FORMAT_KINDS = {"shebang": "shebang", "tool": "tool"}


def check_coverage(layout: Layout, targets: dict[str, TrustedTarget]) -> tuple[dict[str, Region], list[str]]:
    """The regions of ``layout`` to hash against ``targets`` by name, and the problems: a signed target
    missing from the layout, a region (the TUF metadata aside) that is not a signed target of its own
    kind and length, a tool format other than the signed one. Volumes are checked by the same rules."""
    problems: list[str] = []
    signed_format = targets[TOOL_TARGET].custom.get("format") if TOOL_TARGET in targets else None
    if signed_format != layout.tool_format:
        problems.append(
            f"index: tool_format {plain(repr(layout.tool_format))} differs from the signed tool format "
            f"{plain(repr(signed_format))}"
        )
    spans = [r for r in layout.spans() if r.kind != "metadata"]
    present = {r.name for r in spans}
    for name in sorted(set(targets) - present):
        problems.append(f"member {plain(name)}: signed in targets but missing from the archive (removed?)")
    todo: dict[str, Region] = {}
    for region in spans:
        name = plain(region.name)
        target = targets.get(region.name)
        wrong_kind = _kind_problem(region, target) if target is not None else None
        if target is None:
            problems.append(f"member {name}: not signed (unlisted member added to the archive?)")
        elif wrong_kind is not None:
            problems.append(f"member {name}: {wrong_kind}")
        elif region.length != target.length:
            problems.append(f"member {name}: is {region.length} bytes, signed length is {target.length}")
        else:
            todo[region.name] = region
    return todo, problems


def _kind_problem(region: Region, target: TrustedTarget) -> str | None:
    """Why ``target`` cannot vouch for ``region``: a target signed for another kind of region."""
    signed = target.custom.get("kind")
    wanted = _FORMAT_KINDS.get(region.kind)
    if wanted is not None and signed != wanted:
        return f"the format's {region.kind} region is signed as {plain(repr(signed))}, not {wanted!r}"
    if wanted is None and signed in _FORMAT_KINDS.values():
        return f"a payload member signed as the format's own {signed} region"
    return None


def signed_pieces(target: TrustedTarget, length: int) -> list[str] | None:
    """The signed piece hashes of a target ([] if it has none; None if they are malformed): each
    covers ``custom.pieces.size`` bytes of the target in turn, the last one the rest."""
    spec = target.custom.get("pieces")
    if spec is None:
        return []
    try:
        size, digests = int(spec["size"]), list(spec["sha256"])
    except (KeyError, TypeError, ValueError):
        return None
    if size <= 0 or len(digests) != -(-length // size) or not all(isinstance(d, str) for d in digests):
        return None
    return digests
