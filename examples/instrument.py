#!/usr/bin/env python3
"""An example instrument dispatcher: a filter wheel and a heater.

The wheel takes a few seconds to move and refuses a new position while it is
moving; the heater has a set point with a range and a temperature, polled every
half second, that approaches it.  Run it with a router up (or let it spawn
one)::

    python examples/instrument.py [-c CONFIG] [--service NAME] [--speed SECONDS]

and talk to it with ``cauldron-zmq show -s demo FILTER TEMP``.

It is written as KTL dispatchers are: ``DFW.Service`` starts serving when
constructed, and values (``self.value``, what the hooks receive) are ascii
strings -- ``int(value)``, ``value == '1'``, ``float(self.value)``.  A new
dispatcher that prefers typed values passes ``values="native"`` (then
``self.value`` is a float, a bool...); ``self.binary`` is typed in both modes.
"""
from __future__ import annotations

import argparse
import threading
import time
from typing import Optional

from cauldron_zmq import DFW

FILTERS = ["Clear", "V", "R", "I", "Halpha"]


class FilterWheel(DFW.Enumerated):
    """A wheel that takes ``seconds_per_slot`` per slot to move.

    As on many real instruments, a write *starts* the move and returns: TARGET
    says where the wheel goes, MOVING is true until it arrives, and FILTER
    changes on arrival.  A write while the wheel moves is refused.
    """

    seconds_per_slot = 0.5

    def __init__(self, name: str, service: DFW.Service, **kw) -> None:
        super().__init__(name, service, enumerators=FILTERS, initial="Clear",
                         description="Filter in the beam", **kw)
        self._mover: Optional[threading.Thread] = None

    def prewrite(self, value):
        """Refuse a client's write while moving (``check`` would also refuse our own set())."""
        if self._mover is not None and self._mover.is_alive():
            raise RuntimeError(f"the filter wheel is moving to {self.service['TARGET'].ascii}; "
                               "try again when it stops")
        return super().prewrite(value)

    def write(self, value) -> None:
        # value is the enumerator's number as a string ('2'), also equal to its name ('R')
        slots = abs(int(value) - int(self.value or 0))
        self.service["TARGET"].set(value)
        self.service["MOVING"].set("1")
        self._mover = threading.Thread(target=self._move, args=(value, slots),
                                       name="filter-wheel", daemon=True)
        self._mover.start()

    def postwrite(self, value) -> None:
        """FILTER changes when the wheel arrives, not when the move starts."""

    def _move(self, value, slots: int) -> None:
        # A real wheel would be commanded here and polled until it arrives.
        time.sleep(slots * self.seconds_per_slot)
        self.set(value)
        self.service["MOVING"].set("0")


class Temperature(DFW.Double):
    """Read from the 'hardware' every period: approaches the set point."""

    def read(self) -> str:
        service = self.service
        current = float(self.value) if self.value is not None else 20.0
        if service["HEATER"].value == "0":
            goal = 20.0
        else:
            goal = float(service["SETPOINT"].value)
        return str(round(current + (goal - current) * 0.3, 3))


def setup(service: DFW.Service) -> None:
    """Create the keywords; DFW.Service calls this before it starts serving."""
    DFW.Enumerated("TARGET", service, enumerators=FILTERS, initial="Clear", readonly=True,
                   description="Where the filter wheel is going")
    DFW.Boolean("MOVING", service, initial=False, readonly=True, description="The wheel is moving")
    FilterWheel("FILTER", service)
    DFW.Boolean("HEATER", service, initial=True, description="Heater power")
    DFW.Double("SETPOINT", service, initial=20.0, minimum=-20.0, maximum=40.0, units="degC",
               description="Heater set point")
    Temperature("TEMP", service, initial=20.0, period=0.5, readonly=True, units="degC",
                description="Measured temperature")
    DFW.String("OBSERVER", service, initial="nobody", persist=True, description="Who is observing")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="configuration file (TOML)")
    parser.add_argument("--service", default="demo", help="service name (default: demo)")
    parser.add_argument("--speed", type=float, default=FilterWheel.seconds_per_slot,
                        help="seconds per filter slot")
    args = parser.parse_args(argv)
    FilterWheel.seconds_per_slot = args.speed
    service = DFW.Service(args.service, args.config, setup)    # serving from here on
    # A KTL dispatcher would now loop on time.sleep(1); serve_forever() does the
    # same and also shuts down cleanly (unregistering) on SIGINT/SIGTERM.
    service.serve_forever()


if __name__ == "__main__":
    main()
