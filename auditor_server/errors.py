"""Exception hierarchy for the lab side.

Every error the lab side raises on purpose derives from :class:`SandboxError` and says
*who is at fault*, so the CLI (and later the gRPC layer) can map it to an exit code or
status in one place instead of guessing from message text.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base class for every deliberate lab-side failure."""


class InputError(SandboxError):
    """The caller supplied bad input (a corpus file, a question file, a CLI argument)."""


class CorpusError(InputError):
    """A corpus record is invalid; names the 1-based line and the offending field."""

    def __init__(self, line: int, field: str, message: str) -> None:
        self.line = line
        self.field = field
        self.message = message
        super().__init__(f"line {line}: field '{field}': {message}")


class ConfigError(SandboxError):
    """The lab's own configuration is wrong (bad model directory, inconsistent options)."""


class IndexMismatchError(ConfigError):
    """An index was opened with a model, tokenizer or corpus other than the one it was built on."""


class IntegrityError(SandboxError):
    """Stored data failed a checksum or structural check (corruption, tampering, partial write)."""
