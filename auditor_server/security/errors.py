"""Why the lab refuses a request, as one specific gRPC status per failure, leaking nothing.

Every refusal of an envelope is a :class:`RequestRejected` subclass (an
:class:`~auditor_server.errors.InputError`: the auditor's request is at fault). Each class
fixes one gRPC status *name* in ``code``; the service maps names to ``grpc.StatusCode`` in
one place, so this package never imports grpc.

| class                | code                 | why this status                                   |
|----------------------|----------------------|---------------------------------------------------|
| OversizedRequest     | RESOURCE_EXHAUSTED   | gRPC's own status for a message over a size limit |
| MalformedRequest     | INVALID_ARGUMENT     | the bytes are not a well-formed envelope or body  |
| MethodMismatch       | INVALID_ARGUMENT     | a valid envelope, sent to the wrong RPC           |
| UnknownKey           | UNAUTHENTICATED      | no such credential                                |
| StaleTimestamp       | UNAUTHENTICATED      | the credential is not valid *now* (clock skew)    |
| BadSignature         | UNAUTHENTICATED      | the credential does not prove the key             |
| RevokedKey           | UNAUTHENTICATED      | the credential was withdrawn                      |
| ExpiredKey           | UNAUTHENTICATED      | the credential ran out                            |
| ReplayedNonce        | ALREADY_EXISTS       | this exact signed request was already accepted    |
| MethodNotAllowed     | PERMISSION_DENIED    | authenticated, but the role lacks the method      |

Messages are fixed text chosen by the lab. They never echo what the auditor sent (ids,
methods, bytes), never include key material, and never say *which* part of a signature
failed. An unknown auditor and an unknown key of a known auditor get the same
:class:`UnknownKey` message, so the registry cannot be probed for auditor ids. Whether a key
is revoked or expired is only said to a caller whose signature verified, i.e. to the key's
holder (see :func:`auditor_server.security.verify.verify_request`).

The lab's own configuration errors (its signing key, TLS files) are
:class:`~auditor_server.errors.ConfigError` subclasses instead.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from auditor_server.errors import ConfigError, InputError

StatusName = Literal[
    "INVALID_ARGUMENT",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "ALREADY_EXISTS",
    "RESOURCE_EXHAUSTED",
]
"""The gRPC status names an envelope refusal may carry (``grpc.StatusCode[name]``)."""


AUTHENTICATION_FAILED = "the request is not signed by a registered key"
"""One message for an unknown key and a bad signature: the caller must not learn which."""


class RequestRejected(InputError):  # noqa: N818 - the name the service imports; reads as a verdict
    """Base class: the lab refuses this request envelope.

    Attributes:
        code: gRPC status name for this kind of refusal (fixed per subclass).
        message: text safe to send to the caller and to log.
    """

    code: ClassVar[StatusName]
    default_message: ClassVar[str]

    def __init__(self, message: str | None = None) -> None:
        self.message = message if message is not None else self.default_message
        super().__init__(self.message)


class OversizedRequest(RequestRejected):
    """The raw request is larger than the policy allows; it was not parsed."""

    code = "RESOURCE_EXHAUSTED"
    default_message = "request is larger than the server accepts"


class MalformedRequest(RequestRejected):
    """The envelope or its body does not parse, or a field breaks a shape rule."""

    code = "INVALID_ARGUMENT"
    default_message = "request is not a well-formed SignedRequest"


class MethodMismatch(RequestRejected):
    """The envelope names a method other than the RPC it was sent to."""

    code = "INVALID_ARGUMENT"
    default_message = "the envelope's method does not match the RPC called"


class UnknownKey(RequestRejected):
    """No registered key for this (auditor id, key id); deliberately vague about which."""

    code = "UNAUTHENTICATED"
    default_message = AUTHENTICATION_FAILED


class StaleTimestamp(RequestRejected):
    """The request's timestamp is outside the accepted window around server time."""

    code = "UNAUTHENTICATED"
    default_message = "request timestamp is outside the accepted window; check your clock"
    # Fixed text: it used to echo the server's clock, which is not the caller's business.


class BadSignature(RequestRejected):
    """The signature does not verify under the registered key."""

    code = "UNAUTHENTICATED"
    default_message = AUTHENTICATION_FAILED


class RevokedKey(RequestRejected):
    """The key was revoked by the lab."""

    code = "UNAUTHENTICATED"
    default_message = "this signing key has been revoked; ask the lab to register a new one"


class ExpiredKey(RequestRejected):
    """The key's registration has expired."""

    code = "UNAUTHENTICATED"
    default_message = "this signing key has expired; ask the lab to register a new one"


class ReplayedNonce(RequestRejected):
    """This auditor already used this nonce: a replay, or a client reusing envelopes."""

    code = "ALREADY_EXISTS"
    default_message = "request nonce was already used; sign a fresh request"


class MethodNotAllowed(RequestRejected):
    """The auditor's role does not include the method called."""

    code = "PERMISSION_DENIED"
    default_message = "your role may not call this method"


class LabKeyError(ConfigError):
    """The lab's signing key file is missing, unreadable, of the wrong type, or would be
    overwritten. Messages name the path, never the key."""


class TLSFileError(ConfigError):
    """A TLS certificate or key file is missing, unreadable or inconsistent."""
