"""Refresh jobs on the mirror store: queued in the database, run one at a time per store in a child
process (worker.py), their log lines and result recorded as they come.

A job that was queued or running when the service stopped (killed, crashed, power lost) is marked
failed with that reason when the service starts again; its worker died with the service (it asked
the kernel for that), and a worker found still running is stopped. The store's own lock stays the
last word: a refresh started by cron at the same time makes one of them fail cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chiron.service.db import Database
from chiron.service.problems import ProblemError

KIND = "refresh"


class JobRunner:
    def __init__(
        self, db: Database, store: Path, tool_wheels: Path | None, on_finished: Callable[[str, str], None]
    ) -> None:
        self.db = db
        self.store = store.absolute()
        self.tool_wheels = tool_wheels
        self.on_finished = on_finished
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._lock = threading.Lock()
        self.stopping = False

    def recover(self) -> list[str]:
        """Mark jobs a previous run of the service left queued or running as failed; their ids."""
        failed = []
        for row in self.db.interrupted_jobs():
            pid = row["pid"]
            if pid and _is_worker(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            where = f"running (worker pid {pid})" if row["state"] == "running" else "queued"
            self.db.fail_interrupted(row["id"], f"the service stopped while the job was {where}; it did not finish")
            failed.append(str(row["id"]))
        return failed

    def submit(self, by: str, force: bool = False) -> str:
        """Queue a refresh and start it; ProblemError when one is already queued or running."""
        if self.stopping:
            raise ProblemError("unavailable", "the service is stopping")
        # Without tool wheels, a refresh signs the tool of the store's newest appliance again (mirror engine).
        wheels = self.tool_wheels or (
            Path(os.environ["CHIRON_TOOL_WHEELS"]) if "CHIRON_TOOL_WHEELS" in os.environ else None
        )
        job_id = secrets.token_hex(8)
        if not self.db.add_job(job_id, KIND, str(self.store), by, {"force": force}):
            running = self.db.active_job(str(self.store), KIND)
            raise ProblemError(
                "job-running", f"refresh job {running} is still running on {self.store}", job=f"/v1/jobs/{running}"
            )
        threading.Thread(target=self._run, args=(job_id, wheels, force), name=f"job-{job_id}", daemon=True).start()
        return job_id

    def _run(self, job_id: str, wheels: Path | None, force: bool) -> None:
        argv = [
            sys.executable,
            "-m",
            "chiron.service.worker",
            KIND,
            "--store",
            str(self.store),
            "--parent",
            str(os.getpid()),
        ]
        argv += (["--tool-wheels", str(wheels)] if wheels else []) + (["--force"] if force else [])
        try:
            # Started from this thread, which waits for it: PR_SET_PDEATHSIG follows the thread that forked.
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            self.db.job_finished(job_id, False, None, f"cannot start the worker: {exc}")
            self.on_finished(job_id, "failed")
            return
        with self._lock:
            self._procs[job_id] = proc
        self.db.job_started(job_id, proc.pid)
        stderr, stdout = proc.stderr, proc.stdout
        for line in stderr if stderr is not None else ():  # always pipes: both were asked for above
            self.db.job_log(job_id, line.rstrip("\n"))
        out = stdout.read() if stdout is not None else ""
        code = proc.wait()
        with self._lock:
            self._procs.pop(job_id, None)
        if self.stopping and code < 0:
            return  # stopped with the service: marked by stop()
        ok, result, error = _outcome(out, code)
        self.db.job_finished(job_id, ok, result, error)
        self.on_finished(job_id, "succeeded" if ok else "failed")

    def cancel(self, job_id: str, by: str) -> None:
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is None:
            raise ProblemError("not-found", f"job {job_id} is not running")
        self.db.job_log(job_id, f"cancelled by {by}")
        proc.terminate()

    def stop(self, timeout: float = 10.0) -> None:
        """The service is stopping: end running workers and record why."""
        self.stopping = True
        with self._lock:
            procs = dict(self._procs)
        for job_id, proc in procs.items():
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
            self.db.fail_interrupted(job_id, "the service was stopped while the job was running")


def _outcome(out: str, code: int) -> tuple[bool, dict[str, Any] | None, str | None]:
    try:
        doc = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("ok") is True and code == 0:
        return True, doc.get("result"), None
    if isinstance(doc, dict) and doc.get("error"):
        return False, None, str(doc["error"])
    if code < 0:
        return False, None, f"the worker was stopped by signal {-code}"
    return False, None, f"the worker exited with status {code} without a result"


def _is_worker(pid: int) -> bool:
    try:
        return b"chiron.service.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
