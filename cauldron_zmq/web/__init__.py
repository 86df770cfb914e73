"""``cauldron-zmq web``: a live status page and an HTTP/JSON gateway (the ``web`` extra).

:mod:`.gateway` bridges the asyncio server to the threaded ZeroMQ client,
:mod:`.pages` renders the HTML, :mod:`.app` holds the routes; ``static/``
holds the page's script and styles (no build step, no network).
"""
