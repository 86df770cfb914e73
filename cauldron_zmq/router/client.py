"""The blocking router client: :class:`RouterClient`, and :func:`ask_routers`
for asking several routers at once from one thread.

Used by dispatchers, clients and the ``cauldron-zmq services`` command.
Its DEALER is made by :func:`cauldron_zmq.transport.make_socket` and
watched, for a refused CurveZMQ handshake, through
:class:`cauldron_zmq.transport.Monitored`.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import zmq

from .. import protocol
from ..config import Config, load_config
from ..errors import (AuthenticationError, CauldronError, ProtocolError, RouterError,
                      TimeoutError, remote_exception)
from ..security import (FAILED, HANDSHAKE_EVENTS, REFUSED, SUCCEEDED, client_security,
                        handshake_event, refused_message)
from ..protocol.requests import better_refusal
from ..transport import Monitored, make_socket

__all__ = ["RouterClient", "ask_routers", "first_good", "PARALLEL_COMMANDS"]


class RouterClient:
    """A DEALER that asks the router things; one request at a time.

    Not thread-safe by design: a ZeroMQ socket belongs to one thread, so each
    thread that talks to the router makes its own RouterClient.  After a
    timeout the socket is closed and replaced (Lazy Pirate): a late reply
    cannot be mistaken for the next one, and a restarted router is reached.
    ``timeout`` is in milliseconds, as in the configuration.

    With ``[zmq-router] replicas`` (and no explicit ``address``), ``lookup``
    and ``list`` ask every router at once and return the first good answer
    (:func:`ask_routers`): one router down or hung costs nothing.  Every
    other command goes to :attr:`address`, the configuration's own router.
    """

    def __init__(self, config: Union[str, "os.PathLike[str]", Config, None] = None, *,
                 address: Optional[str] = None, timeout: Optional[int] = None,
                 context: Optional[zmq.Context] = None) -> None:
        self.config = load_config(config)
        self.address = address or self.config.router_address()
        #: Every router a look-up asks: just ``address`` when one was given.
        self.addresses = [address] if address else self.config.router_addresses()
        self._peers: List["RouterClient"] = []
        self.timeout = int(timeout if timeout is not None else self.config.router.timeout)
        self._context = context if context is not None else zmq.Context.instance()
        self._max_size = self.config.zmq.max_message_size
        self._security = client_security(self.config)
        self._link: Optional[Monitored] = None   # the DEALER and its handshake monitor
        self._handshake_error = ""
        self._closed = False

    def request(self, command: str, target: str = "", payload: Any = None,
                timeout: Optional[int] = None) -> Dict[str, Any]:
        """Send one request and return the result payload.

        Raises :class:`~cauldron_zmq.errors.RouterError` (``.code`` is the
        protocol error code) for an error reply and
        :class:`~cauldron_zmq.errors.TimeoutError` when no answer comes in time.
        """
        if self._closed:
            raise CauldronError("this RouterClient is closed")
        timeout = self.timeout if timeout is None else int(timeout)
        if command in PARALLEL_COMMANDS and len(self.addresses) > 1:
            return self._ask_first(command, target, payload, timeout)
        req = protocol.request(command, target, {} if payload is None else payload)
        sock = self._sock()
        try:
            sock.send_multipart(protocol.encode_request(req), zmq.NOBLOCK)
        except zmq.Again:
            return self._timed_out(command, target, timeout)
        deadline = time.monotonic() + timeout / 1000.0
        while True:
            if not self._wait(sock, deadline):
                return self._timed_out(command, target, timeout)
            reply = protocol.decode_reply(sock.recv_multipart(), self._max_size)
            if reply.id != req.id:
                continue                # a late answer to a request we gave up on
            result = self._result(reply)
            if result is not None:
                return result

    def _ask_first(self, command: str, target: str, payload: Any,
                   timeout: int) -> Dict[str, Any]:
        """``command`` at every router at once; the first good answer."""
        if not self._peers:
            self._peers = [RouterClient(self.config, address=a, timeout=self.timeout,
                                        context=self._context) for a in self.addresses]
        answers = ask_routers(self._peers, command, target, payload, timeout=timeout,
                              first=True)
        return first_good(answers, command, target, timeout)

    # ------------------------------------------- one request, without waiting
    def send(self, command: str, target: str = "", payload: Any = None) -> Optional[str]:
        """Queue one request and return its id (None: it could not be queued).

        The answer is picked up by :meth:`collect`; :func:`ask_routers` uses
        the pair to ask several routers at once from one thread.
        """
        if self._closed:
            raise CauldronError("this RouterClient is closed")
        req = protocol.request(command, target, {} if payload is None else payload)
        try:
            self._sock().send_multipart(protocol.encode_request(req), zmq.NOBLOCK)
        except zmq.Again:
            self._reset()
            return None
        return req.id

    def pollables(self) -> List[zmq.Socket]:
        """The sockets whose readiness may complete :meth:`collect`."""
        link = self._link
        if link is None:
            return []
        return [link.socket] + ([link.monitor] if link.monitor is not None else [])

    def collect(self, rid: str) -> Optional[Tuple[Dict[str, Any]]]:
        """``(result,)`` once the answer to ``rid`` has arrived, else None.

        An error answer raises as :meth:`request` does; so does a refused
        handshake.  Late answers to older requests are dropped.
        """
        if self._link is None:
            return None
        self._handshake_events(self._link)
        sock = self._link.socket
        while sock.poll(0):
            reply = protocol.decode_reply(sock.recv_multipart(zmq.NOBLOCK), self._max_size)
            if reply.id != rid:
                continue
            result = self._result(reply)
            if result is not None:
                return (result,)
        return None

    def give_up(self) -> None:
        """No answer in time: close the socket (Lazy Pirate; see the class)."""
        self._reset()

    def _result(self, reply: Union[protocol.Reply, protocol.Malformed]) -> Optional[Dict[str, Any]]:
        if isinstance(reply, protocol.Malformed):
            raise ProtocolError(reply.code, f"bad reply from the router at {self.address}: "
                                            f"{reply.message}")
        if reply.status == protocol.ACK:
            return None
        if reply.status == protocol.ERROR:
            err = reply.payload
            raise remote_exception(err["message"], code=err["code"],
                                   remote_type=str(err.get("type") or ""),
                                   peer=self.address, base=RouterError)
        if not isinstance(reply.payload, dict):
            raise ProtocolError(protocol.E_REQUEST,
                                f"the router at {self.address} answered "
                                f"{type(reply.payload).__name__}, not an object")
        return reply.payload

    def _wait(self, sock: zmq.Socket, deadline: float) -> bool:
        """True once a reply waits; meanwhile, a refused handshake raises."""
        link = self._link
        monitor = link.monitor if link is not None else None
        if link is None or monitor is None:
            remaining = deadline - time.monotonic()
            return remaining > 0 and bool(sock.poll(max(1, int(remaining * 1000))))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            events = dict(poller.poll(max(1, int(remaining * 1000))))
            if monitor in events:
                self._handshake_events(link)
            if sock in events:
                return True

    def _handshake_events(self, link: Monitored) -> None:
        for event in link.events():
            kind, text = handshake_event(event, self._security is not None)
            if kind == REFUSED:
                self._reset()    # libzmq does not retry a refused handshake; a new socket will
                raise AuthenticationError(refused_message(f"the router at {self.address}",
                                                          self._security))
            if kind == FAILED:
                self._handshake_error = text
            elif kind == SUCCEEDED:
                self._handshake_error = ""

    def _timed_out(self, command: str, target: str, timeout: int) -> Dict[str, Any]:
        self._reset()
        what = f"{command} {target!r}" if target else command
        hint = ""
        if self._handshake_error:
            hint = f"; the connection's handshake failed: {self._handshake_error}"
        elif self._security is not None and not HANDSHAKE_EVENTS:
            hint = ("; with [zmq-security] enabled, the router's authenticator may have "
                    "refused this client's key")
        raise TimeoutError(f"no answer from the router at {self.address} within "
                           f"{timeout} ms ({what}){hint}")

    def _sock(self) -> zmq.Socket:
        if self._link is None:
            sock = make_socket(self._context, zmq.DEALER, max_size=self._max_size,
                               security=self._security)
            self._link = Monitored(sock, HANDSHAKE_EVENTS)
            sock.connect(self.address)
        return self._link.socket

    def _reset(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close(linger=0)

    # ------------------------------------------------------------ commands
    def register(self, service: str, dispatcher: str, host: str,
                 keywords: Optional[List[str]] = None, pid: Optional[int] = None,
                 prefer: Optional[Tuple[int, int]] = None, avoid: Optional[List[int]] = None,
                 timeout: Optional[int] = None, instance: Optional[str] = None,
                 ready: Optional[bool] = None) -> Dict[str, Any]:
        """The (dispatch, broadcast) pair to bind: see ``register`` in docs/protocol.rst."""
        payload: Dict[str, Any] = {"dispatcher": dispatcher, "host": host}
        optional = {"keywords": keywords, "pid": pid, "prefer": prefer, "avoid": avoid,
                    "instance": instance, "ready": ready}
        for key, value in optional.items():
            if value is not None:
                payload[key] = list(value) if isinstance(value, (list, tuple)) else value
        return self.request("register", service, payload, timeout)

    def lookup(self, service: str, timeout: Optional[int] = None) -> Dict[str, Any]:
        return self.request("lookup", service, {}, timeout)

    def unregister(self, service: str, dispatcher: str, timeout: Optional[int] = None,
                   instance: Optional[str] = None) -> Dict[str, Any]:
        return self.request("unregister", service, _named(dispatcher, instance), timeout)

    def heartbeat(self, service: str, dispatcher: str, timeout: Optional[int] = None,
                  instance: Optional[str] = None) -> Dict[str, Any]:
        return self.request("heartbeat", service, _named(dispatcher, instance), timeout)

    def forget(self, service: str, dispatcher: Optional[str] = None,
               timeout: Optional[int] = None) -> Dict[str, Any]:
        """Remove a service's entries (or one dispatcher's) from the book; admin only."""
        payload = {} if dispatcher is None else {"dispatcher": dispatcher}
        return self.request("forget", service, payload, timeout)

    def unblock(self, port: Optional[int] = None,
                timeout: Optional[int] = None) -> Dict[str, Any]:
        """Release a blocked port (every one without ``port``); admin only."""
        return self.request("unblock", "", {} if port is None else {"port": port}, timeout)

    def list(self, timeout: Optional[int] = None) -> Dict[str, Any]:
        return self.request("list", "", {}, timeout)

    def shutdown(self, timeout: Optional[int] = None) -> Dict[str, Any]:
        return self.request("shutdown", "", {}, timeout)

    def ping(self, timeout: Optional[int] = None) -> Dict[str, Any]:
        return self.request("ping", "", {}, timeout)

    def close(self) -> None:
        self._reset()
        for peer in self._peers:
            peer.close()
        self._peers = []
        self._closed = True

    def __enter__(self) -> "RouterClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


#: Commands a RouterClient with replicas asks every router (first good answer).
PARALLEL_COMMANDS = frozenset({"lookup", "list"})

Answer = Union[Dict[str, Any], BaseException]


def ask_routers(clients: List[RouterClient], command: str, target: str = "",
                payload: Any = None, *, timeout: int, first: bool = False,
                requests: Optional[Dict[str, Tuple[str, Any]]] = None) -> Dict[str, Answer]:
    """Send ``command`` through every client at once; address -> result or exception.

    Waits until each has answered or ``timeout`` (ms) has passed, or with
    ``first`` until one has answered well.  Errors are values here, never
    raised: a :class:`~cauldron_zmq.errors.RouterError` for a refusal, a
    :class:`~cauldron_zmq.errors.TimeoutError` for silence (that client's
    socket is replaced, Lazy Pirate).  The dict is in the order answers came.
    ``requests`` gives some addresses a (command, payload) of their own.
    """
    answers: Dict[str, Answer] = {}
    waiting: Dict[RouterClient, str] = {}
    for client in clients:
        what, body = (requests or {}).get(client.address, (command, payload))
        try:
            rid = client.send(what, target, body)
        except CauldronError as exc:
            answers[client.address] = exc
            continue
        if rid is None:
            answers[client.address] = TimeoutError(
                f"cannot queue {command} to the router at {client.address}")
        else:
            waiting[client] = rid
    deadline = time.monotonic() + timeout / 1000.0
    while waiting and not (first and any(isinstance(a, dict) for a in answers.values())):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        poller = zmq.Poller()
        for client in waiting:
            for sock in client.pollables():
                poller.register(sock, zmq.POLLIN)
        poller.poll(max(1, int(remaining * 1000)))
        for client, rid in list(waiting.items()):
            try:
                got = client.collect(rid)
            except CauldronError as exc:
                answers[client.address] = exc
                del waiting[client]
                continue
            if got is not None:
                answers[client.address] = got[0]
                del waiting[client]
    succeeded = any(isinstance(a, dict) for a in answers.values())
    for client in waiting:
        client.give_up()
        if not (first and succeeded):
            answers[client.address] = TimeoutError(
                f"no answer from the router at {client.address} within {timeout} ms")
    return answers


def first_good(answers: Dict[str, Answer], command: str, target: str,
               timeout: int) -> Dict[str, Any]:
    """The first result among ``answers``; else the most telling error, raised.

    A refusal (``not-found`` first) says more than silence; when every
    router is silent the message names them all.
    """
    for answer in answers.values():
        if isinstance(answer, dict):
            return answer
    errors = [a for a in answers.values() if isinstance(a, BaseException)]
    best: Optional[BaseException] = None
    for refusal in (e for e in errors if isinstance(e, RouterError)):
        best = better_refusal(best, refusal)      # the rule the I/O thread's look-ups use
    for error in ([best] if best is not None else []) + \
            [e for e in errors if not isinstance(e, (TimeoutError, RouterError))]:
        raise error
    what = f"{command} {target!r}" if target else command
    raise TimeoutError(f"no answer from any router ({', '.join(answers) or 'none'}) "
                       f"within {timeout} ms ({what})")


def _named(dispatcher: str, instance: Optional[str]) -> Dict[str, Any]:
    payload: Dict[str, Any] = {"dispatcher": dispatcher}
    if instance is not None:
        payload["instance"] = instance
    return payload


# =============================================================================
# The command line
