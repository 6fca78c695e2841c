"""Errors raised by tcpls.

Every protocol failure carries exactly one TLS alert (RFC 9846 §6):

* :class:`LocalProtocolError` — *we* detected a problem (the peer sent
  something illegal, a certificate did not verify, ...). The engine has queued
  the matching fatal alert for the peer before raising.
* :class:`RemoteAlert` — the *peer* sent us a fatal alert.
* :class:`UsageError` — the application called an engine verb that is illegal
  in the current state (sending before the handshake, after close, ...).

Any other exception escaping an engine is a bug in tcpls.
"""

from __future__ import annotations

from .tls.enums import AlertDescription, enum_name


class TLSError(Exception):
    """Base class of every error tcpls raises."""


class ProtocolError(TLSError):
    """A failure tied to a TLS alert.

    Attributes:
        alert: the alert description (``AlertDescription`` or an unknown ``int``).
        message: human-readable detail.
    """

    def __init__(self, alert: int, message: str = "") -> None:
        self.alert = alert
        self.message = message
        super().__init__(self._text())

    @property
    def alert_name(self) -> str:
        return enum_name(AlertDescription, self.alert)

    def _text(self) -> str:
        return f"{self.alert_name}: {self.message}" if self.message else self.alert_name


class LocalProtocolError(ProtocolError):
    """We detected a protocol violation and sent (or queued) this fatal alert."""


class RemoteAlert(ProtocolError):
    """The peer sent this fatal alert."""

    def _text(self) -> str:
        base = f"peer sent alert {self.alert_name}"
        return f"{base}: {self.message}" if self.message else base


class UsageError(TLSError):
    """The application used the engine in a way its current state forbids."""


class ConnectionClosedError(UsageError):
    """The connection is closed (or closing) in the direction that was used."""


# Convenience constructors for the alerts raised most often, so that call
# sites read like the RFC: ``raise DecodeError("short ServerHello")``.
def _alert_class(name: str, alert: AlertDescription) -> type[LocalProtocolError]:
    def __init__(self: LocalProtocolError, message: str = "") -> None:
        LocalProtocolError.__init__(self, alert, message)

    return type(name, (LocalProtocolError,), {"__init__": __init__, "__doc__": f"Fatal {alert.name} alert."})


DecodeError = _alert_class("DecodeError", AlertDescription.decode_error)
IllegalParameter = _alert_class("IllegalParameter", AlertDescription.illegal_parameter)
UnexpectedMessage = _alert_class("UnexpectedMessage", AlertDescription.unexpected_message)
HandshakeFailure = _alert_class("HandshakeFailure", AlertDescription.handshake_failure)
BadRecordMac = _alert_class("BadRecordMac", AlertDescription.bad_record_mac)
RecordOverflow = _alert_class("RecordOverflow", AlertDescription.record_overflow)
DecryptError = _alert_class("DecryptError", AlertDescription.decrypt_error)
MissingExtension = _alert_class("MissingExtension", AlertDescription.missing_extension)
UnsupportedExtension = _alert_class("UnsupportedExtension", AlertDescription.unsupported_extension)
ProtocolVersionError = _alert_class("ProtocolVersionError", AlertDescription.protocol_version)
InternalError = _alert_class("InternalError", AlertDescription.internal_error)
BadCertificate = _alert_class("BadCertificate", AlertDescription.bad_certificate)


class UnexpectedEOF(LocalProtocolError):
    """The transport closed before the peer's close_notify (truncation)."""

    def __init__(self, message: str = "peer closed the connection without close_notify") -> None:
        LocalProtocolError.__init__(self, AlertDescription.decode_error, message)
