"""[zmq-security]: CurveZMQ between router, dispatchers and clients; write access;
who may shut the router down; loopback-only defaults; ``cauldron-zmq keygen``.

Everything runs in this process on free 127.0.0.1 ports; keys are made in
tmp_path.  Each configuration belongs to one object, so a router, a
dispatcher and clients with different keys live side by side.
"""
from __future__ import annotations

import os
import shutil
import stat
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import zmq
import zmq.auth
from click.testing import CliRunner

from cauldron_zmq import DFW, ktl
from cauldron_zmq.cli import main as cli_main
from cauldron_zmq.config import DEFAULT, Config, config_from_mapping, load_config
from cauldron_zmq.errors import (AuthenticationError, ConfigurationError, DispatcherError,
                                 RouterError, TimeoutError as CzTimeout)
from cauldron_zmq.router import Router, RouterClient
from cauldron_zmq.router.serving import admin_refusal
from cauldron_zmq.security import (HANDSHAKE_EVENTS, ServerSecurity, create_keys, is_z85_key,
                                   loopback)
from cauldron_zmq.testing import free_port, free_ports, wait_until, write_test_config

pytestmark = pytest.mark.timeout(60)

needs_curve = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
needs_events = pytest.mark.skipif(not HANDSHAKE_EVENTS,
                                  reason="libzmq < 4.3 reports no handshake refusals")

NAMES = ("server", "ops", "observer", "stranger")


# --------------------------------------------------------------------- setup

@pytest.fixture
def keys(tmp_path: Path) -> Dict[str, Any]:
    """Key pairs in tmp_path/keys; the servers accept ops, observer and server itself."""
    keydir = tmp_path / "keys"
    made = {name: create_keys(str(keydir), name) for name in NAMES}
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    for name in ("server", "ops", "observer"):   # server: dispatchers register with its pair
        shutil.copy(made[name][0], authorized)
    return {"dir": keydir, "authorized": authorized, "pairs": made}


def server_config(tmp_path: Path, keys: Dict[str, Any], **security: Any) -> Config:
    """A router + dispatcher configuration with CurveZMQ on free loopback ports."""
    section = {"enable": True, "server-secret-key": keys["pairs"]["server"][1],
               "authorized-keys": str(keys["authorized"]), "admins": ["ops"],
               "writers": {"FILTER": ["ops"], "LOCKED": []}}
    section.update(security)
    return load_config(write_test_config(tmp_path, overrides={"zmq-security": section}))


def client_config(cfg: Config, keys: Dict[str, Any], name: str) -> Config:
    """What a client holding key ``name`` uses: its own pair and the servers' public key."""
    return cfg.replace(security={"client-secret-key": keys["pairs"][name][1],
                                 "server-public-key": keys["pairs"]["server"][0],
                                 "server-secret-key": "", "authorized-keys": ""})


def setup(service: Any) -> None:
    DFW.Double("POSITION", service, initial=1.0)
    DFW.Enumerated("FILTER", service, enumerators=["Clear", "Red", "Blue"], initial="Clear")
    DFW.Integer("LOCKED", service, initial=7)


class Installation:
    """A router and a dispatcher of 'stage' (own configurations), and clients."""

    def __init__(self, router_cfg: Config, dispatcher_cfg: Config) -> None:
        self.router_cfg = router_cfg
        self._stack = ExitStack()
        self.router = Router(router_cfg).start()
        self._stack.callback(self.router.stop)
        self.dispatcher = DFW.Service("stage", dispatcher_cfg, setup=setup).begin()
        self._stack.callback(self.dispatcher.shutdown)

    def client(self, cfg: Config, **kwargs: Any) -> Any:
        svc = ktl.Service("stage", config=cfg, **kwargs)
        self._stack.callback(svc.shutdown)
        return svc

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def secure(tmp_path: Path, keys: Dict[str, Any]) -> Iterator[Any]:
    cfg = server_config(tmp_path, keys)
    inst = Installation(cfg, cfg)
    try:
        yield inst, cfg
    finally:
        inst.close()


# ----------------------------------------------------------- reads and writes

@needs_curve
def test_curve_everywhere_reads_writes_and_monitors(secure: Any, keys: Dict[str, Any]) -> None:
    inst, cfg = secure
    svc = inst.client(client_config(cfg, keys, "observer"))
    assert svc["POSITION"].read() == "1.0"
    seen: List[str] = []
    got = threading.Event()

    def callback(kw: Any) -> None:
        seen.append(kw["ascii"])
        if kw["ascii"] == "12.5":
            got.set()
    svc["POSITION"].callback(callback)
    svc["POSITION"].monitor()
    svc["POSITION"].write(12.5)
    assert got.wait(10), seen
    assert svc["FILTER"].read() == "Clear"          # reads stay open
    # The dispatcher registered over CURVE too (with its server pair).
    with RouterClient(client_config(cfg, keys, "ops")) as rc:
        [entry] = rc.lookup("stage")["dispatchers"]
    assert entry["keywords"] == ["FILTER", "LOCKED", "POSITION"]


@needs_curve
def test_write_access_per_keyword(secure: Any, keys: Dict[str, Any]) -> None:
    inst, cfg = secure
    ops = inst.client(client_config(cfg, keys, "ops"))
    observer = inst.client(client_config(cfg, keys, "observer"))

    ops["FILTER"].write("Red")                      # listed: allowed
    with pytest.raises(DispatcherError) as info:
        observer["FILTER"].write("Blue")            # not listed
    assert info.value.code == "not-allowed"
    assert isinstance(info.value, PermissionError)
    assert "client key 'observer' may not write FILTER" in str(info.value)
    assert observer["FILTER"].read() == "Red"       # refused: nothing changed

    for client in (ops, observer):                  # read-only by policy: nobody
        with pytest.raises(DispatcherError) as info:
            client["LOCKED"].write(8)
        assert info.value.code == "not-allowed"
        assert "nobody may write LOCKED" in str(info.value)
    observer["POSITION"].write(3.0)                 # no rule: any authenticated client


def test_writer_rules_precedence(tmp_path: Path, keys: Dict[str, Any]) -> None:
    cfg = server_config(tmp_path, keys, writers={
        "*": ["ops"], "stage.*": ["observer"], "FOCUS": [], "stage.FOCUS": ["ops", "observer"],
        "other": {"TEMP": []}})
    sec = ServerSecurity(cfg, "dispatcher")
    ops, observer = (sec.keyring.by_name[n] for n in ("ops", "observer"))
    assert sec.writers_for("stage", "FOCUS") == {ops, observer}     # service.KEYWORD first
    assert sec.writers_for("lab", "FOCUS") == frozenset()           # then KEYWORD
    assert sec.writers_for("stage", "ANY") == {observer}            # then service.*
    assert sec.writers_for("lab", "ANY") == {ops}                   # then *
    assert sec.writers_for("other", "TEMP") == frozenset()          # nested table form
    assert sec.write_refusal("lab", "ANY", ops) is None
    assert "client key 'observer' may not write ANY" in sec.write_refusal("lab", "ANY", observer)
    assert is_z85_key(ops) and not is_z85_key("ops")


# ---------------------------------------------------------------- refusals

@needs_curve
@needs_events
def test_unknown_key_is_told_by_the_router(secure: Any, keys: Dict[str, Any]) -> None:
    inst, cfg = secure
    with pytest.raises(AuthenticationError) as info:
        inst.client(client_config(cfg, keys, "stranger"), timeout=20)
    text = str(info.value)
    assert not isinstance(info.value, CzTimeout)
    assert f"not authorised by the router at {cfg.router_address()}" in text
    assert "CurveZMQ authenticator refused this client's key" in text
    assert keys["pairs"]["stranger"][1] in text            # which key file to fix
    with RouterClient(client_config(cfg, keys, "stranger"), timeout=20000) as rc:
        with pytest.raises(AuthenticationError, match="not authorised by the router"):
            rc.ping()
    stranger_file = Path(cfg.source).with_name("stranger.toml")
    stranger_file.write_text(client_config(cfg, keys, "stranger").to_toml(), encoding="utf-8")
    result = CliRunner().invoke(cli_main, ["show", "-c", str(stranger_file), "-s", "stage",
                                           "-t", "20", "POSITION"])
    assert result.exit_code == 1
    assert "error: looking up service 'stage': not authorised by the router at" \
        in result.output


@needs_curve
@needs_events
def test_unknown_key_is_told_by_the_dispatcher(tmp_path: Path, keys: Dict[str, Any]) -> None:
    """The router lets 'stranger' in, the dispatcher does not."""
    dispatcher_cfg = server_config(tmp_path, keys)
    router_keys = tmp_path / "router-authorized"
    shutil.copytree(keys["authorized"], router_keys)
    shutil.copy(keys["pairs"]["stranger"][0], router_keys)
    router_cfg = dispatcher_cfg.replace(security={"authorized-keys": str(router_keys)})
    inst = Installation(router_cfg, dispatcher_cfg)
    try:
        stranger = client_config(dispatcher_cfg, keys, "stranger")
        with pytest.raises(AuthenticationError) as info:
            inst.client(stranger, timeout=20)
        text = str(info.value)
        assert "not authorised by dispatcher 'default' at tcp://127.0.0.1:" in text
        assert "CurveZMQ authenticator refused this client's key" in text
        # Let it in (no restart: the directory is read again at each handshake);
        # the next request makes a new connection and gets through.
        svc = inst.client(client_config(dispatcher_cfg, keys, "observer"))
        shutil.copy(keys["pairs"]["stranger"][0], keys["authorized"])
        late = inst.client(stranger)
        assert late["POSITION"].read() == "1.0"
        assert svc.isAlive()
    finally:
        inst.close()


@needs_curve
def test_client_without_security_gets_a_hint(secure: Any) -> None:
    inst, cfg = secure
    plain = cfg.replace(security={"enable": False, "writers": {}, "admins": []})
    with pytest.raises(CzTimeout) as info:
        inst.client(plain)
    if HANDSHAKE_EVENTS:
        assert "mechanism mismatch" in str(info.value)


@needs_curve
def test_router_shutdown_needs_an_admin_key(secure: Any, keys: Dict[str, Any]) -> None:
    inst, cfg = secure
    with RouterClient(client_config(cfg, keys, "observer")) as rc:
        with pytest.raises(RouterError) as info:
            rc.shutdown()
        assert info.value.code == "not-allowed"
        assert "client key 'observer' is not listed in [zmq-security] admins" in str(info.value)
        assert rc.ping()["pid"] == os.getpid()      # still serving
    with RouterClient(client_config(cfg, keys, "ops")) as rc:
        assert rc.shutdown() == {}
    wait_until(lambda: not inst.router.running, 10, message="the router stopping")


class _Peer:
    def __init__(self, **props: str) -> None:
        self.props = props

    def get(self, name: str) -> str:
        return self.props[name]


def test_shutdown_without_security_only_from_loopback() -> None:
    for address, allowed in (("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                             ("10.203.7.3", False), ("", False)):
        refusal = admin_refusal(DEFAULT, None, _Peer(**{"Peer-Address": address}), "shutdown")
        assert (refusal is None) == allowed, (address, refusal)
    assert "only from its own host" in refusal
    ipc = DEFAULT.replace(router={"protocol": "ipc", "host": "/tmp/czmq-router"})
    assert admin_refusal(ipc, None, _Peer(**{"Peer-Address": ""}), "shutdown") is None
    assert loopback("::ffff:127.0.0.1") and not loopback("192.0.2.1")


# --------------------------------------------------------- configuration errors

def test_access_rules_need_security() -> None:
    with pytest.raises(ConfigurationError) as info:
        config_from_mapping({"zmq-security": {"writers": {"FILTER": []}}}, source="x.toml")
    assert "x.toml: [zmq-security] writers:" in str(info.value)
    assert "enable = false" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        config_from_mapping({"zmq-security": {"enable": True, "writers": {"FILTER": "ops"}}})
    assert "[zmq-security] writers: expected a list of key names" in str(info.value)


def test_missing_and_unknown_keys_are_named(tmp_path: Path, keys: Dict[str, Any]) -> None:
    cfg = server_config(tmp_path, keys, writers={"FILTER": ["obsrever"]})
    with pytest.raises(ConfigurationError) as info:
        DFW.Service("stage", cfg, setup=setup).begin()
    text = str(info.value)
    assert text.startswith(f"{cfg.source}: [zmq-security] writers: ")
    assert "'obsrever'" in text and "'observer'" in text
    no_secret = cfg.replace(security={"server-secret-key": keys["pairs"]["server"][0]})
    with pytest.raises(ConfigurationError, match="server-secret-key: .* holds no secret key"):
        Router(no_secret).serve()
    with pytest.raises(ConfigurationError, match="client-secret-key: not set"):
        RouterClient(cfg.replace(security={"server-secret-key": "",
                                           "server-public-key": keys["pairs"]["server"][0]}))


# ------------------------------------------------------------------ defaults

def test_defaults_bind_loopback_only() -> None:
    """Without a configuration file everything binds 127.0.0.1 (checked on the sockets)."""
    router_port = free_port()
    first = free_ports(2, consecutive=True)[0]
    cfg = DEFAULT.replace(router={"port": router_port, "first-port": first,
                                  "last-port": first + 1, "allow-spawn": False})
    assert (cfg.zmq.host, cfg.router.host) == ("localhost", "localhost")   # the defaults
    with ExitStack() as stack:
        router = Router(cfg).start()
        stack.callback(router.stop)
        assert router.endpoint == f"tcp://127.0.0.1:{router_port}"
        svc = DFW.Service("loop", cfg, setup=lambda s: DFW.Integer("N", s, initial=1)).begin()
        stack.callback(svc.shutdown)
        assert svc.bound_endpoints == (f"tcp://127.0.0.1:{first}", f"tcp://127.0.0.1:{first + 1}")


# -------------------------------------------------------------------- keygen

def test_keygen_makes_pairs_and_keeps_existing_ones(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "k"
    result = runner.invoke(cli_main, ["keygen", str(target), "--name", "observer",
                                      "--name", "ops"])
    assert result.exit_code == 0, result.output
    for name in ("observer", "ops"):
        public, secret = target / f"{name}.key", target / f"{name}.key_secret"
        assert str(public) in result.output and str(secret) in result.output
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert zmq.auth.load_certificate(str(secret))[1]
    again = runner.invoke(cli_main, ["keygen", str(target), "--name", "ops"])
    assert again.exit_code == 1 and "exists" in again.output
    assert runner.invoke(cli_main, ["keygen", str(target)]).exit_code == 0   # 'server'
    assert (target / "server.key").exists()
