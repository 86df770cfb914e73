"""Process limits a server needs: enough file descriptors for its clients.

libzmq spins at 100 % CPU in its I/O thread when ``accept()`` fails with
EMFILE while connections wait (it retries at once, for ever), so a router or
dispatcher started under a small soft limit (``ulimit -n 64``) must not stay
there.  The soft limit is raised to the hard limit at start; no privilege is
needed for that.
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

__all__ = ["raise_file_limit", "wanted_file_limit"]

log = logging.getLogger("cauldron_zmq.limits")

#: Never ask for more than this (an "unlimited" hard limit is not a number to set).
CEILING = 1 << 20


def wanted_file_limit(soft: int, hard: int, infinity: int = -1) -> int:
    """The soft limit to set: the hard limit (capped at :data:`CEILING`), never lower."""
    target = CEILING if hard == infinity else min(hard, CEILING)
    if soft == infinity:
        return soft
    return max(soft, target)


def raise_file_limit() -> Optional[Tuple[int, int]]:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; (old, new) soft limits,
    or None where there is no such limit (not POSIX) or it cannot be changed."""
    try:
        import resource
    except ImportError:            # Windows
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted_file_limit(soft, hard, resource.RLIM_INFINITY)
        if target != soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.debug("raised the open-file limit from %d to %d", soft, target)
        return soft, target
    except (OSError, ValueError) as exc:
        log.warning("could not raise the open-file limit: %s", exc)
        return None
