"""What the system decides: the wire format and the protocol's state machines.

Nothing in this package opens a socket, starts a thread or reads a clock:
time is an argument (``now``) and every decision is returned as data for an
I/O layer (:mod:`cauldron_zmq.transport` and the role packages) to carry out.
``tests/protocol`` drives it with a fake clock, and a test proves it imports
with ``zmq``, ``socket`` and ``threading`` unimportable.

* :mod:`.wire` -- the codec: frames, requests, replies, broadcasts (re-exported
  here, so ``cauldron_zmq.protocol.request(...)`` keeps working);
* :mod:`.payloads` -- Heartbeat, Value and Entry: what producers build and
  consumers decode, one definition each;
* :mod:`.book` -- the router's book of services and dispatchers (with
  :mod:`.entries`, :mod:`.pairs` and :mod:`.bookfile`);
* :mod:`.requests` -- the client's table of requests in flight;
* :mod:`.links` -- what a client knows of each dispatcher (liveness, loss, restarts);
* :mod:`.cache` -- a keyword's cached value and which updates reach callbacks;
* :mod:`.backoff`, :mod:`.retry`, :mod:`.replicas` -- retry schedules and the
  multi-router plan.
"""
from .wire import *  # noqa: F401,F403 - the codec is the package's public face
from .wire import __all__ as _wire_all

__all__ = list(_wire_all)
