"""The [cluster] section: node_id, bus_url (checked, not used yet) and drain_seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from callbox.server.app import Platform
from callbox.server.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callbox.toml"
    path.write_text(text)
    return path


def test_cluster_keys_load_and_name_the_node(tmp_path: Path) -> None:
    path = write(tmp_path, '[cluster]\nnode_id = "node-a"\nbus_url = "nats://127.0.0.1:4222"\n'
                           "drain_seconds = 30\n")
    config = load_config(path, env={})
    assert config.cluster.node_id == "node-a"
    assert config.cluster.bus_url == "nats://127.0.0.1:4222"
    assert config.cluster.drain_seconds == 30
    config.storage.data_dir = str(tmp_path / "data")
    platform = Platform(config)
    assert platform.node_id == platform.services.node_id == "node-a"


def test_without_a_node_id_each_start_gets_a_fresh_one(tmp_path: Path) -> None:
    config = load_config(None, env={})
    assert config.cluster.node_id == "" and config.cluster.drain_seconds == 0
    first, second = Platform(config).node_id, Platform(config).node_id
    assert first and second and first != second


def test_cluster_keys_come_from_the_environment_too() -> None:
    config = load_config(None, env={"CALLBOX_CLUSTER_NODE_ID": "node-b",
                                    "CALLBOX_CLUSTER_DRAIN_SECONDS": "5"})
    assert (config.cluster.node_id, config.cluster.drain_seconds) == ("node-b", 5)


@pytest.mark.parametrize("text, message", [
    ('node_id = "node a"', "cluster.node_id may hold only"),
    (f'node_id = "{"n" * 65}"', "cluster.node_id may hold only"),
    ('bus_url = "http://127.0.0.1:4222"', "cluster.bus_url must be a NATS URL"),
    ('bus_url = "nats://"', "cluster.bus_url must be a NATS URL"),
    ('bus_url = "nats://127.0.0.1:99999"', "cluster.bus_url must be a NATS URL"),
    ('bus_url = "nats://127.0.0.1:4222/x"', "cluster.bus_url must be a NATS URL"),
    ("drain_seconds = -1", "cluster.drain_seconds must be 0-86400"),
    ('drain_seconds = "soon"', "cluster.drain_seconds must be an integer"),
    ('nodes = 2', "unknown key [cluster] nodes"),
])
def test_bad_cluster_values_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, f"[cluster]\n{text}\n"), env={})


def test_a_nats_url_with_credentials_and_no_port_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[cluster]\nbus_url = "nats://u:p@nats.internal"\n'),
                         env={})
    assert config.cluster.bus_url == "nats://u:p@nats.internal"
