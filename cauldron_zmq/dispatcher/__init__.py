"""The dispatcher (being split into a package: see :mod:`.service`)."""
from . import service as _service
from .service import *  # noqa: F401,F403
from .service import MAX_QUEUED, _IOThread, _spawned  # noqa: F401

__all__ = list(_service.__all__)
