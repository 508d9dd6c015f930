"""One exception hierarchy; each class carries the documented exit code (docs/exit-codes.md).

Every error message is one line that names the thing at fault (file, field, member, role) and, where
there is one, what to do about it. The CLI catches ChironError once and prints the message; a
traceback only with --verbose.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes shared by every command."""

    OK = 0
    VERIFY_FAILED = 1
    USAGE = 2
    ENVIRONMENT = 3
    REFUSED = 4


class ChironError(Exception):
    """Base of every error chiron reports to a user."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """The user-facing text: the message, then the hint on what to do."""
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class UsageError(ChironError):
    """Bad command line or bad input file (spec, lock, key)."""

    exit_code = ExitCode.USAGE


class SpecError(UsageError):
    """The appliance spec is invalid; the message names file and field."""


class LockError(UsageError):
    """A lock file is invalid or does not fit the spec."""


class SigningKeyError(UsageError):
    """A signing key cannot be loaded or does not match the root metadata."""


class EnvironmentProblem(ChironError):
    """Something outside chiron is missing or failing: a program, the network, disk space."""

    exit_code = ExitCode.ENVIRONMENT


class ArtifactError(EnvironmentProblem):
    """An artifact could not be fetched, or its bytes do not match the pinned hash."""


class VerificationError(ChironError):
    """The archive failed verification; ``problems`` lists every finding."""

    exit_code = ExitCode.VERIFY_FAILED

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        first = problems[0] if problems else "verification failed"
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(first + more, hint=hint)
        self.problems = problems


class Refused(ChironError):
    """The operation is refused by policy (downgrade, rollback); an explicit flag may allow it."""

    exit_code = ExitCode.REFUSED


class ServerRefused(Refused):
    """A chiron serve refused the request (401, 403, 409); ``problem_type`` is its RFC 9457 type URI."""

    def __init__(self, message: str, *, problem_type: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problem_type = problem_type


class FormatError(VerificationError):
    """The file does not have the structure of a chiron appliance; ``str()`` names where."""

    def __init__(self, message: str) -> None:
        super().__init__([message])


class HostStateError(Refused):
    """The host's state directory is missing, inconsistent or tampered with; chiron will not guess."""


class PolicyViolation(Refused):
    """The resolved content breaks the policy; ``details`` lists every violation."""

    def __init__(self, violations: Sequence[object], details: list[dict[str, str]], where: str) -> None:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(
            f"policy {where}: {first}{more}",
            hint="fix the spec's constraints or the policy; the previous appliance stays the newest",
        )
        self.details = details


class StoreStateError(Refused):
    """A mirror store's state is damaged or not what chiron wrote; chiron will not guess what it held."""
