"""Exceptions raised by the protocol core.

There are two families, so that callers can tell our own bugs from bad input:

    PithError
    ├── InvalidInput            bytes or values from outside failed a check
    │   ├── CanonicalJSONError  not acceptable as canonical JSON
    │   ├── IdentifierError     a Pith number, alias or arXiv id is malformed
    │   ├── KeyFormatError      a public key, signature or digest is malformed
    │   ├── SignatureError      a well-formed signature does not verify
    │   ├── EventError          an event envelope or payload is invalid
    │   ├── DocumentError       a bundle or state document is invalid
    │   └── WireError           a frame or message from a peer is invalid
    └── UsageError              the caller used the API wrongly (our bug)

Every ``InvalidInput`` carries ``field``, a dotted path such as
``payload.url`` or ``events[3].signer``, so messages and logs can name what
failed. Input from a peer, a file or an HTTP mirror never raises anything
outside this tree from the protocol core.
"""

from __future__ import annotations

__all__ = [
    "PithError",
    "InvalidInput",
    "CanonicalJSONError",
    "IdentifierError",
    "KeyFormatError",
    "SignatureError",
    "EventError",
    "DocumentError",
    "WireError",
    "UsageError",
]

# Values quoted in messages are cut to this many characters so that a
# megabyte-long hostile string cannot flood a log line.
_MAX_QUOTED_VALUE = 80


def quote_value(value: object) -> str:
    """Return a short printable representation of an offending value."""
    text = repr(value)
    if len(text) > _MAX_QUOTED_VALUE:
        text = text[: _MAX_QUOTED_VALUE - 3] + "..."
    return text


class PithError(Exception):
    """Base class of every error raised by the protocol core."""


class InvalidInput(PithError):
    """Input from outside failed a check.

    Attributes:
        field: dotted path of the offending field, or "" for the whole input.
        reason: what is wrong, without the field name.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        message = f"{field}: {reason}" if field else reason
        super().__init__(message)


class CanonicalJSONError(InvalidInput):
    """Input is not valid JSON, or contains a value canonical JSON does not allow."""


class IdentifierError(InvalidInput):
    """A Pith number, short number, alias or source identifier is malformed."""


class KeyFormatError(InvalidInput):
    """A public key, signature or digest is not in its one accepted encoding."""


class SignatureError(InvalidInput):
    """A well-formed Ed25519 signature does not verify."""


class EventError(InvalidInput):
    """An event envelope or its payload is invalid.

    Attributes:
        code: a stable reason code such as ``bad_signature``. The merge writes
            the code, not the message, into ``invalid_events``, so the state
            hash never depends on the wording of a message.
    """

    def __init__(self, field: str, reason: str, code: str = "malformed_envelope") -> None:
        super().__init__(field, reason)
        self.code = code


class DocumentError(InvalidInput):
    """A bundle, state or record document is invalid."""


class WireError(InvalidInput):
    """A frame or message received from a peer is invalid."""


class UsageError(PithError):
    """The protocol core was called wrongly; this is a bug in the caller."""
