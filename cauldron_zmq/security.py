"""CurveZMQ for cauldron_zmq: keys, the authenticator, and who may write what.

With ``[zmq-security] enable = true`` every connection is a CurveZMQ one:

* the **servers** -- the router's ``ROUTER``, each dispatcher's ``ROUTER``
  and ``PUB`` -- are CURVE servers with the ``server-secret-key`` pair, and a
  ZAP authenticator (:class:`zmq.auth.thread.ThreadAuthenticator`, one per
  ZeroMQ context, on a thread of its own) accepts only the client keys found
  in the ``authorized-keys`` directory;
* the **clients** -- ``ktl.Service`` sockets, :class:`~cauldron_zmq.router.RouterClient`
  (which dispatchers use to register) -- are CURVE clients with the
  ``client-secret-key`` pair, and check the servers' identity with
  ``server-public-key``.

A server learns the public key of the client behind each request from the
message's ZAP ``User-Id`` (the z85 text of the key); :class:`ServerSecurity`
turns it into write-access and shutdown decisions.  ``docs/security.rst``
describes it for people; this module holds the mechanics, so that the router,
the dispatcher and the client only call a few functions.

A refused client is told so: ZeroMQ drops a refused connection silently, but a
socket monitor sees ``EVENT_HANDSHAKE_FAILED_AUTH`` (libzmq >= 4.3):
:func:`handshake_event` recognises it and :func:`refused_message` says what
the :class:`~cauldron_zmq.errors.AuthenticationError` raised then tells.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple

import zmq

from .config import Config
from .errors import ConfigurationError

__all__ = [
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "ClientSecurity",
    "ServerSecurity",
    "KeyRing",
    "client_security",
    "server_security",
    "create_keys",
    "auth_events_supported",
    "HANDSHAKE_EVENTS",
    "handshake_event",
    "refused_message",
    "is_z85_key",
    "frame_property",
    "loopback",
    "describe_keys",
]

log = logging.getLogger("cauldron_zmq.security")

SECTION = "zmq-security"
PUBLIC_SUFFIX = ".key"            # zmq.auth.create_certificates' names
SECRET_SUFFIX = ".key_secret"

_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 ".-:+=^!/*?&<>()[]{}@%$#")


def is_z85_key(text: str) -> bool:
    """True for the 40-character z85 text of a CurveZMQ key."""
    return len(text) == 40 and all(c in _Z85 for c in text)


# =============================================================================
# Handshake events (client side)
# =============================================================================

def auth_events_supported() -> bool:
    """libzmq >= 4.3 reports handshake failures, refusals included, to monitors."""
    return zmq.zmq_version_info() >= (4, 3) and hasattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH")


#: The monitor events :func:`handshake_event` understands (0 where libzmq cannot report them).
HANDSHAKE_EVENTS = (int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED
                        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
                    if auth_events_supported() else 0)

REFUSED, FAILED, SUCCEEDED = "refused", "failed", "succeeded"

_MISMATCH = int(getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002))


def handshake_event(event: Dict[str, Any], secure: bool = True) -> Tuple[str, str]:
    """(kind, explanation) of a monitor event: REFUSED, FAILED, SUCCEEDED or ``""``.

    REFUSED: the server's authenticator refused our key (libzmq does not
    reconnect after that).  FAILED: the handshake broke for another reason;
    libzmq keeps retrying, so it is worth mentioning if a request times out.
    ``secure`` says whether this side uses CurveZMQ: without it, a handshake
    cut short is only a server going away, not news.
    """
    if not HANDSHAKE_EVENTS:
        return "", ""
    kind = int(event.get("event") or 0)
    value = int(event.get("value") or 0)
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return REFUSED, f"ZAP status {value}"
    if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return SUCCEEDED, ""
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MISMATCH:
        return FAILED, ("security mechanism mismatch: [zmq-security] enable differs between "
                        "this process and the server")
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return FAILED, f"ZMTP protocol error 0x{value:x}"
    if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and secure:
        return FAILED, ("the server closed the connection during the handshake (a wrong "
                        "server-public-key, or [zmq-security] enable differs between the sides)")
    return "", ""


def refused_message(peer: str, client: Optional["ClientSecurity"]) -> str:
    """What a client is told when ``peer`` (e.g. "the router at tcp://...") refused its key."""
    text = (f"not authorised by {peer}: its CurveZMQ authenticator refused this "
            f"client's key")
    if client is not None:
        text += (f" {client.public_text} (from {client.origin}); the server accepts the "
                 f"public key files in its [zmq-security] authorized-keys directory")
    return text


# =============================================================================
# Key files
# =============================================================================

def _error(config: Config, key: str, message: str) -> ConfigurationError:
    source = config.source or "<configuration>"
    return ConfigurationError(f"{source}: [{SECTION}] {key}: {message}",
                              source=source, section=SECTION, key=key)


def _load(config: Config, key: str, path: str, need_secret: bool) -> Tuple[bytes, Optional[bytes]]:
    """(public, secret) z85 bytes of a zmq.auth key file, or a ConfigurationError."""
    import zmq.auth
    if not os.path.isfile(path):
        raise _error(config, key, f"key file {path} does not exist (make key pairs with "
                                  f"'cauldron-zmq keygen DIRECTORY')")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise _error(config, key, f"cannot read key file {path}: "
                                  f"{exc.strerror or exc}") from None
    except ValueError as exc:
        raise _error(config, key, f"{path} is not a zmq.auth key file ({exc}); make keys "
                                  f"with 'cauldron-zmq keygen DIRECTORY'") from None
    if need_secret and not secret:
        raise _error(config, key, f"{path} holds no secret key: name the "
                                  f"'{SECRET_SUFFIX}' file of the pair, not the "
                                  f"'{PUBLIC_SUFFIX}' one")
    if secret:
        _check_private(path)
        try:
            derived = zmq.curve_public(secret)
        except (zmq.ZMQError, AttributeError):
            derived = public
        if derived != public:
            raise _error(config, key, f"{path}: its public key does not belong to its "
                                      f"secret key")
    return public, secret


def _check_private(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secret key file %s can be read by other users (mode %03o); "
                    "'chmod 600' it", path, stat.S_IMODE(mode))


def create_keys(directory: str, name: str, force: bool = False) -> Tuple[str, str]:
    """Make the key pair ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600).

    The directory is created (mode 0700) if needed.  Existing files are kept
    (:class:`FileExistsError`) unless ``force``.  Returns (public, secret) paths.
    """
    import zmq.auth
    if not name or name.startswith(".") or os.sep in name or (os.altsep or os.sep) in name:
        raise ValueError(f"a key name is a plain file name, got {name!r}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public = os.path.join(directory, name + PUBLIC_SUFFIX)
    secret = os.path.join(directory, name + SECRET_SUFFIX)
    if not force:
        for path in (public, secret):
            if os.path.exists(path):
                raise FileExistsError(f"{path} exists; use another name, or --force to "
                                      f"replace the pair")
    old = os.umask(0o077)       # the secret file is never readable by others, not even briefly
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return str(public), str(secret)


# =============================================================================
# The client side
# =============================================================================

class ClientSecurity:
    """This process's client key pair and the servers' public key."""

    def __init__(self, public: bytes, secret: bytes, server_public: bytes, origin: str) -> None:
        self.public = public
        self.secret = secret
        self.server_public = server_public
        self.origin = origin

    @property
    def public_text(self) -> str:
        return self.public.decode("ascii")

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client (before it connects)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def client_security(config: Config) -> Optional[ClientSecurity]:
    """The client keys to use, or None without ``[zmq-security] enable``.

    ``client-secret-key`` is this process's pair; a dispatcher or router
    without one uses its ``server-secret-key`` pair.  ``server-public-key``
    identifies the servers; unset, the public half of ``server-secret-key``.
    """
    sec = config.security
    if not sec.enable:
        return None
    server_public: Optional[bytes] = None
    if sec.server_public_key:
        server_public, _ = _load(config, "server-public-key", sec.server_public_key, False)
    server_pair = None
    if sec.server_secret_key:
        server_pair = _load(config, "server-secret-key", sec.server_secret_key, True)
        if server_public is None:
            server_public = server_pair[0]
    if server_public is None:
        raise _error(config, "server-public-key",
                     "not set: with enable = true a client needs the servers' public key "
                     "file (the '.key' file of the pair that server-secret-key names on "
                     "the router and the dispatchers)")
    if sec.client_secret_key:
        public, secret = _load(config, "client-secret-key", sec.client_secret_key, True)
        origin = sec.client_secret_key
    elif server_pair is not None:
        public, secret = server_pair
        origin = f"{sec.server_secret_key}, as client-secret-key is not set"
    else:
        raise _error(config, "client-secret-key",
                     "not set: with enable = true a client needs its own key pair "
                     "(make one with 'cauldron-zmq keygen DIRECTORY --name NAME')")
    assert secret is not None
    return ClientSecurity(public, secret, server_public, origin)


# =============================================================================
# The server side
# =============================================================================

class KeyRing:
    """The public key files (``*.key``) of a directory, by z85 text and by file stem.

    Also the ZAP credentials provider: :meth:`callback` accepts a key that is in
    the directory.  The directory is looked at again at every handshake (new
    connections only; they are rare), so adding or removing a key file takes
    effect without a restart.
    """

    def __init__(self, directory: str, config: Config) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._stamp: Optional[Tuple[Tuple[str, int], ...]] = None
        self.by_key: Dict[str, str] = {}
        self.by_name: Dict[str, str] = {}
        self._warned: set = set()
        if not os.path.isdir(directory):
            raise _error(config, "authorized-keys",
                         f"{directory} is not a directory of public key files")
        self._refresh()
        if not self.by_key:
            log.warning("no public key file (*%s) in %s: every client will be refused",
                        PUBLIC_SUFFIX, directory)

    def _scan(self) -> Tuple[Tuple[str, int], ...]:
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(PUBLIC_SUFFIX))
        except OSError:
            return ()
        stamp = []
        for name in names:
            try:
                stamp.append((name, os.stat(os.path.join(self.directory, name)).st_mtime_ns))
            except OSError:
                continue
        return tuple(stamp)

    def _refresh(self) -> None:
        import zmq.auth
        stamp = self._scan()
        with self._lock:
            if stamp == self._stamp:
                return
            by_key: Dict[str, str] = {}
            for name, _mtime in stamp:
                path = os.path.join(self.directory, name)
                try:
                    public, _ = zmq.auth.load_certificate(path)
                except (OSError, ValueError) as exc:
                    log.warning("ignoring %s: not a public key file (%s)", path, exc)
                    continue
                by_key[public.decode("ascii")] = name[:-len(PUBLIC_SUFFIX)]
            self.by_key = by_key
            self.by_name = {stem: key for key, stem in by_key.items()}
            self._stamp = stamp

    def name(self, key: Optional[str]) -> str:
        """The file stem of a key, else the key itself."""
        if not key:
            return "(unauthenticated)"
        return self.by_key.get(key, key)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: accept a client key (z85 bytes) found in the directory."""
        self._refresh()
        text = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        if text in self.by_key:
            return True
        if text not in self._warned and len(self._warned) < 1000:
            self._warned.add(text)
            log.warning("refused a client with key %s: not in %s", text, self.directory)
        return False


class ServerSecurity:
    """What a CURVE server (router or dispatcher) needs: its pair, the accepted
    client keys, and the access rules with key names resolved to keys."""

    def __init__(self, config: Config, role: str) -> None:
        sec = config.security
        self.role = role
        if not sec.server_secret_key:
            raise _error(config, "server-secret-key",
                         f"not set: with enable = true the {role} needs the servers' secret "
                         f"key file (make a pair with 'cauldron-zmq keygen DIRECTORY')")
        public, secret = _load(config, "server-secret-key", sec.server_secret_key, True)
        assert secret is not None
        self.public, self.secret = public, secret
        if not sec.authorized_keys:
            raise _error(config, "authorized-keys",
                         f"not set: with enable = true the {role} needs the directory of "
                         f"the client public keys it accepts")
        self.keyring = KeyRing(sec.authorized_keys, config)
        self.writers: Dict[str, FrozenSet[str]] = {
            rule: self._resolve(config, "writers", names, rule)
            for rule, names in sec.writers.items()}
        self.admins = self._resolve(config, "admins", sec.admins)

    def _resolve(self, config: Config, key: str, names: Iterable[str],
                 rule: str = "") -> FrozenSet[str]:
        keys = set()
        for name in names:
            if is_z85_key(name):
                keys.add(name)
            elif name in self.keyring.by_name:
                keys.add(self.keyring.by_name[name])
            else:
                where = f"{key} {rule!r}" if rule else key
                known = ", ".join(repr(n) for n in sorted(self.keyring.by_name)) or "none"
                raise _error(config, key, (
                    f"{where}: no key named {name!r} in authorized-keys "
                    f"({self.keyring.directory}); known names: {known}"))
        return frozenset(keys)

    # ------------------------------------------------------------- sockets
    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (before it binds)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def start_authenticator(self, context: zmq.Context) -> Any:
        """The ZAP handler of ``context``: stop() it before terminating the context."""
        from zmq.auth.thread import ThreadAuthenticator
        auth = ThreadAuthenticator(context, log=logging.getLogger("cauldron_zmq.security.zap"))
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=self.keyring)
        return auth

    # ------------------------------------------------------------- access
    def writers_for(self, service: str, keyword: str) -> Optional[FrozenSet[str]]:
        """The keys that may write, or None for every authenticated client."""
        writers = self.writers
        if not writers:
            return None
        for rule in (f"{service}.{keyword}", keyword, f"{service}.*", "*"):
            allowed = writers.get(rule)
            if allowed is not None:
                return allowed
        return None

    def write_refusal(self, service: str, keyword: str, key: Optional[str]) -> Optional[str]:
        """Why the client with ``key`` may not write ``keyword``; None if it may."""
        allowed = self.writers_for(service, keyword)
        if allowed is None or (key and key in allowed):
            return None
        if not allowed:
            return (f"nobody may write {keyword} of service {service!r}: the dispatcher's "
                    f"[zmq-security.writers] lists no client key for it")
        return (f"client key {self.keyring.name(key)!r} may not write {keyword} of service "
                f"{service!r} (see [zmq-security.writers] of the dispatcher)")

    def is_admin(self, key: Optional[str]) -> bool:
        return bool(key) and key in self.admins

    def admin_refusal(self, key: Optional[str], what: str = "shutdown") -> Optional[str]:
        """Why the client with ``key`` may not do ``what`` (an admin's command:
        shutdown, forget, unblock); None if it may."""
        if self.is_admin(key):
            return None
        if not self.admins:
            hint = "; stop it with SIGTERM on its host" if what == "shutdown" else ""
            return f"{what} refused: [zmq-security] admins of the {self.role} lists no key{hint}"
        return (f"{what} refused: client key {self.keyring.name(key)!r} is not listed in "
                f"[zmq-security] admins of the {self.role}")


def server_security(config: Config, role: str) -> Optional[ServerSecurity]:
    """The server side of ``[zmq-security]`` for ``role`` ("router", "dispatcher"),
    or None when security is off.  Raises ConfigurationError naming the key."""
    if not config.security.enable:
        return None
    return ServerSecurity(config, role)


def frame_property(frame: Any, name: str) -> str:
    """A message property ("User-Id", "Peer-Address") of a zmq.Frame, or ``""``."""
    try:
        value = frame.get(name)
    except (zmq.ZMQError, AttributeError, TypeError, UnicodeDecodeError):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")


def loopback(address: str) -> bool:
    """True for a loopback peer address (127.0.0.0/8, ::1, ::ffff:127.x)."""
    import ipaddress
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def describe_keys(directory: str) -> List[Tuple[str, str]]:
    """(name, z85 public key) of each ``*.key`` file of a directory, sorted."""
    import zmq.auth
    out = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(PUBLIC_SUFFIX):
            try:
                public, _ = zmq.auth.load_certificate(os.path.join(directory, name))
            except (OSError, ValueError):
                continue
            out.append((name[:-len(PUBLIC_SUFFIX)], public.decode("ascii")))
    return out
