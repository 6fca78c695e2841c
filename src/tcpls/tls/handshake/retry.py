"""The second ClientHello after a HelloRetryRequest (RFC 9846 §4.1.2, §4.1.4).

The client "MUST send the same ClientHello without modification", except:

* key_share: the list of shares replaced by one share for the group the
  HelloRetryRequest named (the server checks that share itself);
* early_data: removed (0-RTT is not permitted after a HelloRetryRequest);
* cookie: added, when the HelloRetryRequest carried one (checked by the server);
* pre_shared_key: obfuscated ages and binders recomputed, and PSKs whose hash
  does not fit the HelloRetryRequest's cipher suite optionally removed (so
  the extension may disappear altogether);
* padding (RFC 7685): added, removed or resized;
* changes allowed by future extensions present in the HelloRetryRequest
  (our HelloRetryRequest carries none).

Everything else, fields and extensions alike, and the order of the
extensions, must stay as it was; any other difference is illegal_parameter.
The check runs only on connections that had a HelloRetryRequest.
"""

from __future__ import annotations

from ...errors import IllegalParameter
from .. import extensions as X
from .. import messages as M
from ..enums import ExtensionType as E

__all__ = ["check_second_client_hello"]

# Extensions that may change, appear or disappear as listed above.
_DROPPED_FROM_FIRST = frozenset({E.early_data, E.padding})
_DROPPED_FROM_SECOND = frozenset({E.cookie, E.padding})
_BODY_MAY_CHANGE = frozenset({E.key_share, E.pre_shared_key})


def check_second_client_hello(first: M.ClientHello, second: M.ClientHello) -> None:
    """Raise :class:`IllegalParameter` unless ``second`` is ``first`` with
    only the changes RFC 9846 §4.1.2 allows after a HelloRetryRequest."""
    if second.random != first.random or second.legacy_session_id != first.legacy_session_id:
        raise IllegalParameter("second ClientHello changed random or legacy_session_id")
    if second.legacy_version != first.legacy_version:
        raise IllegalParameter("second ClientHello changed legacy_version")
    if second.cipher_suites != first.cipher_suites:
        raise IllegalParameter("second ClientHello changed cipher_suites")
    if second.legacy_compression_methods != first.legacy_compression_methods:
        raise IllegalParameter("second ClientHello changed legacy_compression_methods")
    old = [(t, b) for t, b in first.extensions if t not in _DROPPED_FROM_FIRST]
    new = [(t, b) for t, b in second.extensions if t not in _DROPPED_FROM_SECOND]
    if all(t != E.pre_shared_key for t, _ in new):
        # Every offered PSK may have been dropped for the new cipher suite.
        old = [(t, b) for t, b in old if t != E.pre_shared_key]
    if len(old) != len(new) or any(t1 != t2 for (t1, _), (t2, _) in zip(old, new)):
        raise IllegalParameter("second ClientHello added, removed or reordered extensions")
    for (t, b1), (_, b2) in zip(old, new):
        if t == E.pre_shared_key:
            _check_psk_identities(b1, b2)
        elif t not in _BODY_MAY_CHANGE and b1 != b2:
            raise IllegalParameter(f"second ClientHello changed extension {t}")


def _check_psk_identities(first: bytes, second: bytes) -> None:
    """The second offer keeps the first one's identities, in order, some possibly removed."""
    before = [i.identity for i in X.decode_pre_shared_key_ch(first).identities]
    after = [i.identity for i in X.decode_pre_shared_key_ch(second).identities]
    it = iter(before)
    if not all(any(identity == b for b in it) for identity in after):
        raise IllegalParameter("second ClientHello offers PSK identities the first did not")
