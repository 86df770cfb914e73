"""The dispatcher: a keyword service that instrument code embeds (DFW's ``Service``).

Threads, and why there are several (one socket belongs to one thread):

* the **I/O thread** (:mod:`.io`) owns the ROUTER (requests) and the PUB
  (broadcasts).  It answers requests that run no instrument code itself
  (the fast path, :mod:`.handlers`), and sends every reply and broadcast
  that other threads hand it through the service's one mailbox
  (:class:`cauldron_zmq.transport.Mailbox`);
* **workers** (:class:`~cauldron_zmq.workers.KeyedExecutor`) run user hooks,
  one FIFO queue per keyword, so a 30-second ``write`` only holds up writes
  to that keyword;
* the **scheduler** hands periodic and scheduled updates to those queues;
* the **registrar** (:mod:`.registrar`) owns a client per router
  (``[zmq-router] replicas``): heartbeats to every router, re-registration
  after a router restart, a replacement router when none answers, and the
  final ``unregister``; :mod:`.registration` does the first registration
  (bind first, second copies refused);
* the **persister** saves persisted values off every other thread.

The package: :mod:`.service` (:class:`Service`: keywords and lifecycle),
:mod:`.sources` (keyword files, KTL XML, setup), :mod:`.io`, :mod:`.handlers`
(pure: request and keywords in, reply out), :mod:`.registration` and
:mod:`.registrar`.  ``docs/dispatcher.rst``
describes the behaviour; ``docs/protocol.rst`` the wire.
"""
from .io import MAX_QUEUED, BindError  # noqa: F401 - MAX_QUEUED: imported by tests
from .registration import AlreadyServed
from .service import DEFAULT_DISPATCHER, Service, ServiceLog

__all__ = ["Service", "DEFAULT_DISPATCHER", "BindError", "ServiceLog", "AlreadyServed"]

# Their public home, as before the package split: reprs, tracebacks, pickles
# and the API docs (one description each) name ``cauldron_zmq.dispatcher.X``.
for _cls in (Service, BindError, ServiceLog, AlreadyServed):
    _cls.__module__ = __name__
del _cls
