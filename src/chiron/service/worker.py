"""A refresh job's own process: ``python -m chiron.service.worker refresh --store S ...``.

The service runs each job in a child process, so a refresh that crashes, leaks or is cancelled
cannot take the service with it, and the store's lock (flock) is released by the kernel whatever
happens. The child asks the kernel to kill it if the service dies (PR_SET_PDEATHSIG), so a job never
outlives the service that would record its end; the next start marks such a job failed. It prints
log lines on stderr and one JSON result on stdout.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from pathlib import Path

from chiron.errors import ChironError

PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the service's start-up still marks an orphaned job failed
    if os.getppid() != parent:  # the service died before the request took effect
        os._exit(1)


def log(line: str) -> None:
    sys.stderr.write(line.rstrip("\n") + "\n")
    sys.stderr.flush()


def refresh(store: Path, tool_wheels: Path | None, force: bool) -> dict[str, object]:
    from chiron.engines.mirror import RefreshOptions, Store
    from chiron.engines.mirror import refresh as run_refresh

    state = Store(store).state()
    log(f"refresh of {store} started (spec {state.spec if state else '?'}, force={force})")
    result = run_refresh(RefreshOptions(store=store, tool_wheels=tool_wheels, force=force, show_progress=False))
    if result.changed:
        log(
            f"built {result.appliance}: {result.name} {result.version}, metadata version {result.metadata_version}, "
            f"{result.size} bytes ({result.downloaded} artifacts downloaded, {result.reused} from the store)"
        )
        packages = (result.changelog or {}).get("packages") or {}
        counts = {k: len(packages.get(k) or []) for k in ("added", "changed", "removed")}
        log("packages: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    else:
        log(f"up to date: {result.name} {result.version} metadata version {result.metadata_version} stays the newest")
    for note in result.notes:
        log(f"note: {note}")
    return result.as_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chiron.service.worker")
    parser.add_argument("kind", choices=["refresh"])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--tool-wheels", type=Path)  # default: the tool of the store's newest appliance
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with(args.parent)
    try:
        result = refresh(args.store, args.tool_wheels, args.force)
    except ChironError as exc:
        log(f"error: {exc.diagnostics()}")
        print(json.dumps({"ok": False, "error": exc.diagnostics(), "exit_code": int(exc.exit_code)}))
        return int(exc.exit_code)
    except OSError as exc:
        log(f"error: {exc}")
        print(json.dumps({"ok": False, "error": str(exc), "exit_code": 3}))
        return 3
    print(json.dumps({"ok": True, "result": result}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
