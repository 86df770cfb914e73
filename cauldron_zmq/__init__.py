"""cauldron_zmq: KTL-style keyword dispatchers, clients and a router over ZeroMQ.

``cauldron_zmq.DFW`` is the dispatcher API and ``cauldron_zmq.ktl`` the client
API, with the names and meaning of KTL's Python modules as the original
Cauldron project mirrored them.  Submodules are imported on first use so that
``import cauldron_zmq`` stays cheap.
"""
__version__ = "0.1.0"
