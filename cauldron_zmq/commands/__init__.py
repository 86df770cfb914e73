"""Sub-commands of ``cauldron-zmq``, one module per area (router, serve, tools)."""
