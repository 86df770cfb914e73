"""CurveZMQ and the asyncio client: reads and monitors over CURVE, and a refused key
reported at once (AuthenticationError, not a timeout) by the router or the dispatcher."""
from __future__ import annotations

import asyncio
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import zmq

from cauldron_zmq import DFW, aio
from cauldron_zmq.config import Config, load_config
from cauldron_zmq.router import Router
from cauldron_zmq.security import HANDSHAKE_EVENTS, create_keys
from cauldron_zmq.testing import write_test_config

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60),
              pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE"),
              pytest.mark.skipif(not HANDSHAKE_EVENTS,
                                 reason="libzmq < 4.3 reports no handshake refusals")]

NAMES = ("server", "observer", "stranger")


@pytest.fixture
def keys(tmp_path: Path) -> Dict[str, Any]:
    made = {name: create_keys(str(tmp_path / "keys"), name) for name in NAMES}
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    for name in ("server", "observer"):
        shutil.copy(made[name][0], authorized)
    return {"authorized": authorized, "pairs": made}


def server_config(tmp_path: Path, keys: Dict[str, Any]) -> Config:
    section = {"enable": True, "server-secret-key": keys["pairs"]["server"][1],
               "authorized-keys": str(keys["authorized"])}
    return load_config(write_test_config(tmp_path, overrides={"zmq-security": section}))


def client_config(cfg: Config, keys: Dict[str, Any], name: str) -> Config:
    return cfg.replace(security={"client-secret-key": keys["pairs"][name][1],
                                 "server-public-key": keys["pairs"]["server"][0],
                                 "server-secret-key": "", "authorized-keys": ""})


def setup(service: Any) -> None:
    DFW.Double("POSITION", service, initial=1.0)


@pytest.fixture
def installation(tmp_path: Path, keys: Dict[str, Any]) -> Iterator[Any]:
    """A router that also lets 'stranger' in, and a dispatcher that does not."""
    cfg = server_config(tmp_path, keys)
    router_keys = tmp_path / "router-authorized"
    shutil.copytree(keys["authorized"], router_keys)
    shutil.copy(keys["pairs"]["stranger"][0], router_keys)
    with ExitStack() as stack:
        router = Router(cfg.replace(security={"authorized-keys": str(router_keys)})).start()
        stack.callback(router.stop)
        dispatcher = DFW.Service("stage", cfg, setup=setup).begin()
        stack.callback(dispatcher.shutdown)
        yield cfg


async def test_reads_and_monitors_over_curve(installation: Config,
                                             keys: Dict[str, Any]) -> None:
    async with aio.Service("stage", config=client_config(installation, keys, "observer")) \
            as svc:
        assert await svc["POSITION"].read() == "1.0"
        updates = svc["POSITION"].monitor()
        assert (await updates.__anext__()).ascii == "1.0"
        assert await svc["POSITION"].write(2.5) == "2.5"
        assert (await asyncio.wait_for(updates.__anext__(), 5)).ascii == "2.5"


async def test_refused_by_the_dispatcher_at_once(installation: Config,
                                                 keys: Dict[str, Any]) -> None:
    stranger = client_config(installation, keys, "stranger")
    start = time.monotonic()
    with pytest.raises(aio.AuthenticationError) as info:
        async with aio.Service("stage", config=stranger, timeout=20):
            pass
    assert time.monotonic() - start < 10                       # told, not timed out
    text = str(info.value)
    assert "not authorised by dispatcher 'default' at tcp://127.0.0.1:" in text
    assert "CurveZMQ authenticator refused this client's key" in text
    assert not isinstance(info.value, aio.TimeoutError)


async def test_refused_by_the_router_at_once(tmp_path: Path, keys: Dict[str, Any]) -> None:
    cfg = server_config(tmp_path, keys)
    router = Router(cfg).start()
    try:
        start = time.monotonic()
        with pytest.raises(aio.AuthenticationError) as info:
            async with aio.Service("stage", config=client_config(cfg, keys, "stranger"),
                                   timeout=20):
                pass
        assert time.monotonic() - start < 10
        assert f"not authorised by the router at {cfg.router_address()}" in str(info.value)
    finally:
        router.stop()
