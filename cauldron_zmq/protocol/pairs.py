"""The port range of the router's book: which pair is whose, which ports are blocked.

:class:`PairTable` is the half of :class:`~cauldron_zmq.protocol.book.Book`
that knows ports and nothing of names' rules: pair ``i`` is
``(first_port + 2i, first_port + 2i + 1)``, the lowest never-used pair is
found in a lazily cleaned heap, and a port a dispatcher could not bind is
skipped for a while (:data:`~cauldron_zmq.protocol.entries.BLOCK_RETRY`).
Pure: time is an argument.
"""
from __future__ import annotations

import heapq
from typing import Any, Dict, List, Optional, Set, Tuple

from . import wire as protocol
from .backoff import Schedule
from .entries import BLOCK_RETRY, QUIET, Block, Entry, Log, RouterRefusal, _is_port

__all__ = ["PairTable"]


class PairTable:
    """The pairs of ``first_port..last_port``, their owners and the blocked ports."""

    def __init__(self, first_port: int, last_port: int, block_retry: Schedule = BLOCK_RETRY,
                 log: Log = QUIET) -> None:
        if last_port - first_port + 1 < 2:
            raise ValueError(f"port range {first_port}..{last_port} holds no pair")
        self.first_port = first_port
        self.last_port = last_port
        self.block_retry = block_retry
        self.log = log
        self._owners: Dict[int, Entry] = {}
        self._blocks: Dict[int, Block] = {}
        # Candidates for the lowest never-used pair: a heap whose stale items
        # (owned since) are skipped lazily by _first_free().
        self._free: List[int] = list(range(self.pairs))

    @property
    def pairs(self) -> int:
        """How many pairs the range holds (an odd last port is left unused)."""
        return (self.last_port - self.first_port + 1) // 2

    @property
    def range_text(self) -> str:
        return f"{self.first_port}..{self.last_port}"

    @property
    def blocked(self) -> List[int]:
        """The ports reported unbindable and not released since (inside the range)."""
        return sorted(self._blocks)

    def blocked_at(self, now: float) -> List[int]:
        """The blocked ports still skipped at ``now`` (the others are tried again)."""
        return sorted(p for p, b in self._blocks.items() if b.until > now)

    def ports(self, pair: int) -> Tuple[int, int]:
        base = self.first_port + 2 * pair
        return base, base + 1

    def pair_of(self, port: int) -> Optional[int]:
        """The pair a port belongs to, or None outside the range (or the odd last port)."""
        pair = (port - self.first_port) // 2
        return pair if port >= self.first_port and pair < self.pairs else None

    def __len__(self) -> int:
        return len(self._owners)

    def _preferred_pair(self, prefer: Optional[List[Any]]) -> Optional[int]:
        """The pair index of ``prefer``, or None when it is not a pair of the range."""
        if prefer is None:
            return None
        if len(prefer) != 2 or not all(_is_port(p) for p in prefer):
            raise RouterRefusal(protocol.E_REQUEST,
                                "payload field 'prefer' must be [dispatch_port, broadcast_port]")
        pair = self.pair_of(prefer[0])
        if pair is None or self.ports(pair) != (prefer[0], prefer[1]):
            return None
        return pair

    def _ports_in_range(self, avoid: Optional[List[Any]]) -> Set[int]:
        if avoid is None:
            return set()
        if not all(_is_port(p) for p in avoid):
            raise RouterRefusal(protocol.E_REQUEST,
                                "payload field 'avoid' must be a list of port numbers")
        return {p for p in avoid if self.pair_of(p) is not None}

    def _blockable(self, ports: Set[int], entry: Optional[Entry]) -> Set[int]:
        """The avoided ports that may be blocked: not those of a pair another name holds
        (its dispatcher binds them; nobody else could, and nobody else may move it)."""
        kept = set()
        for port in ports:
            pair = self.pair_of(port)
            if pair is None or self._owners.get(pair, entry) is entry:
                kept.add(port)
        return kept

    def _first_free(self, blocked: Set[Any]) -> Optional[int]:
        """The lowest pair nobody holds and nobody blocked; the heap is cleaned lazily."""
        heap, kept, found = self._free, [], None
        while heap:
            pair = heap[0]
            if pair in self._owners:
                heapq.heappop(heap)              # stale candidate: owned since
            elif pair in blocked:
                kept.append(heapq.heappop(heap))  # blocked for now: tried again later
            else:
                found = pair
                break
        for pair in kept:
            heapq.heappush(heap, pair)
        return found

    def _block(self, ports: Set[int], name: str, now: float) -> None:
        for port in sorted(ports):
            old = self._blocks.get(port)
            count = old.count + 1 if old is not None else 1
            delay = self.block_retry.delay(count - 1)
            self._blocks[port] = Block(now + delay, count)
            self.log.warning("port %d blocked (%s could not bind it): its pair is skipped for "
                        "%.0f s, then tried again", port, name, delay)

    def _release(self, entry: Entry) -> None:
        """The entry's dispatcher binds its pair: whatever blocked those ports is gone."""
        for port in (entry.dispatch_port, entry.broadcast_port):
            if self._blocks.pop(port, None) is not None:
                self.log.info("port %d is bindable again (%s binds it); released", port, entry.name)

    def _move(self, entry: Entry, pair: int) -> None:
        old = entry.pair
        del self._owners[old]
        heapq.heappush(self._free, old)
        entry.pair = pair
        entry.dispatch_port, entry.broadcast_port = self.ports(pair)
        self._owners[pair] = entry
