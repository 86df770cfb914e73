"""``python -m cauldron_zmq`` is the ``cauldron-zmq`` command."""
from .cli import main

if __name__ == "__main__":
    main(prog_name="cauldron-zmq")
