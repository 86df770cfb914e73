"""``python -m cauldron_zmq.router``: the ``Cauldron-router-zmq`` console script."""
from . import PROG, main

if __name__ == "__main__":
    main(prog_name=PROG)
