"""Crossing the gap on media: split an appliance (or a delta) into volumes that each verify alone,
verify one volume, join volumes, and receive an appliance or volumes off media, verified in the
same pass as the copy (ADR 0011, docs/format.md#volumes)."""

from chiron.engines.media.check import verify_volume
from chiron.engines.media.join import JoinResult, join
from chiron.engines.media.receive import ReceiveResult, receive
from chiron.engines.media.split import SplitResult, split

__all__ = ["JoinResult", "ReceiveResult", "SplitResult", "join", "receive", "split", "verify_volume"]
