"""The router's book is sans-I/O: its modules import with no socket, thread or logging.

Run in a fresh interpreter whose import system refuses ``zmq``, ``socket``,
``threading``, ``logging`` and ``subprocess`` (``logging`` would bring
``threading`` along), so a stray import in ``cauldron_zmq.protocol`` fails
here rather than in a review.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cauldron_zmq

BLOCKED = ("zmq", "socket", "threading", "logging", "subprocess")

SCRIPT = f"""
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("refused: " + name)
        return None

sys.meta_path.insert(0, Refuse())
import cauldron_zmq.protocol
import cauldron_zmq.protocol.book, cauldron_zmq.protocol.bookfile
import cauldron_zmq.protocol.entries, cauldron_zmq.protocol.pairs
from cauldron_zmq.protocol.book import Book
book = Book(7000, 7003, expiry=10.0)
assert book.register("svc", "d", "127.0.0.1", now=1.0)["dispatch_port"] == 7000
assert Book.from_data(book.to_data(2.0), first_port=7000, last_port=7003, expiry=10.0,
                      now=3.0).get("svc", "d").dispatch_port == 7000
print("pure")
"""


def test_the_book_imports_without_sockets_threads_or_logging() -> None:
    root = str(Path(cauldron_zmq.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pure"
