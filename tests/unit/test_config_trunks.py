"""[[trunks]]: the documented keys, the password from the environment, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from callbox.server.config import ConfigError, load_config

CARRIER = """
[[trunks]]
name = "carrier"
proxy = "sip.example.net:5080"
transport = "udp"
username = "callbox"
password = "secret"
realm = "example.net"
register = true
expires = 120
from_number = "+15550100"
"""


def test_every_key_is_read(tmp_path: Path) -> None:
    path = tmp_path / "callbox.toml"
    path.write_text(CARRIER)
    (trunk,) = load_config(path, env={}).trunks
    assert (trunk.name, trunk.proxy, trunk.transport, trunk.username, trunk.password,
            trunk.realm, trunk.register, trunk.expires, trunk.from_number) == (
        "carrier", "sip.example.net:5080", "udp", "callbox", "secret", "example.net", True,
        120, "+15550100")
    assert trunk.host_port == ("sip.example.net", 5080)


def test_defaults_and_default_port(tmp_path: Path) -> None:
    path = tmp_path / "callbox.toml"
    path.write_text('[[trunks]]\nname = "pbx"\nproxy = "[::1]"\n')
    (trunk,) = load_config(path, env={}).trunks
    assert trunk.host_port == ("::1", 5060)
    assert (trunk.transport, trunk.register, trunk.expires) == ("udp", False, 300)


def test_password_from_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "callbox.toml"
    path.write_text(CARRIER)
    env = {"CALLBOX_TRUNK_CARRIER_PASSWORD": "from-env"}
    assert load_config(path, env=env).trunks[0].password == "from-env"


@pytest.mark.parametrize(("change", "words"), [
    ('transport = "udp"', 'transport = "tls"'),
    ("expires = 120", "expires = 0"),
    ("expires = 120", 'expires = "soon"'),
    ("register = true", 'register = "yes"'),
    ('proxy = "sip.example.net:5080"', 'proxy = "sip.example.net:x"'),
    ('proxy = "sip.example.net:5080"', 'proxy = "h:70000"'),
    ('username = "callbox"', "username = 5"),
    ('realm = "example.net"', 'realm = "x"\nallowed = 1'),
])
def test_bad_values_name_the_key(tmp_path: Path, change: str, words: str) -> None:
    key = words.split(" ")[0]
    path = tmp_path / "callbox.toml"
    path.write_text(CARRIER.replace(change, words))
    with pytest.raises(ConfigError, match=key) as caught:
        load_config(path, env={})
    assert "'carrier'" in str(caught.value)


def test_missing_proxy_and_duplicate_names(tmp_path: Path) -> None:
    path = tmp_path / "callbox.toml"
    path.write_text('[[trunks]]\nname = "a"\n')
    with pytest.raises(ConfigError, match="needs proxy"):
        load_config(path, env={})
    path.write_text(CARRIER + CARRIER)
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(path, env={})


def test_register_needs_a_username(tmp_path: Path) -> None:
    path = tmp_path / "callbox.toml"
    path.write_text('[[trunks]]\nname = "a"\nproxy = "h"\nregister = true\n')
    with pytest.raises(ConfigError, match="needs username"):
        load_config(path, env={})


def test_allow_takes_cidr_networks(tmp_path: Path) -> None:
    path = tmp_path / "callbox.toml"
    path.write_text(CARRIER + 'allow = ["192.0.2.0/24", "2001:db8::/32"]\n')
    assert load_config(path, env={}).trunks[0].allow == ["192.0.2.0/24", "2001:db8::/32"]
    path.write_text(CARRIER + 'allow = ["192.0.2.0/33"]\n')
    with pytest.raises(ConfigError, match="is not a CIDR"):
        load_config(path, env={})
    path.write_text(CARRIER + 'allow = "192.0.2.0/24"\n')
    with pytest.raises(ConfigError, match="allow must be a list"):
        load_config(path, env={})
