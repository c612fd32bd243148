"""The cluster's bookkeeping without a bus: subject tokens, heartbeats, liveness, config."""

from __future__ import annotations

import pytest

from callbox.server.cluster.bus import decode, encode, events_subject, offer_subject, token
from callbox.server.cluster.directory import (
    Directory,
    Heard,
    NodeInfo,
    heartbeat,
    parse_heartbeat,
)
from callbox.server.config import ClusterConfig, ConfigError, validate_cluster

SALES = frozenset({("p1", "sales")})


def test_a_subject_token_never_splits_or_matches_a_wildcard() -> None:
    assert token("node-a_1") == "node-a_1"
    assert token("") == "%"
    for text in ("a.b", "a*", "a>", "a b", "é", "%"):
        encoded = token(text)
        assert not set(encoded) & set(". *>\t") and encoded != token(text + "x")
    assert token("a.b") == "a%2Eb" and token("é") == "%C3%A9"
    assert token("a.b") != token("a_b")
    assert offer_subject("p.1", "sales") == "callbox.offer.p%2E1.sales"
    assert events_subject("node.a") == "callbox.events.node%2Ea"


def test_messages_are_json_objects_anything_else_is_refused() -> None:
    assert decode(encode({"a": [1, "b"]})) == {"a": [1, "b"]}
    for payload in (b"[1]", b"not json", b"\xff\xfe", b'"text"'):
        assert decode(payload) is None


def test_a_heartbeat_round_trips_and_malformed_ones_are_refused() -> None:
    info = NodeInfo("node-a", "i1", 5.0, SALES, frozenset({"node-b"}))
    assert parse_heartbeat(heartbeat(info), 5.0) == info
    good = heartbeat(info)
    for bad in ({**good, "node": ""}, {**good, "incarnation": 1}, {**good, "contexts": "x"},
                {**good, "contexts": [["p1"]]}, {**good, "contexts": [["p1", 2]]},
                {**good, "peers": [1]}, {}):
        assert parse_heartbeat(bad, 5.0) is None


def test_nodes_join_serve_contexts_and_are_lost_after_their_silence() -> None:
    directory = Directory("node-a", silence=3.0)
    assert directory.heard(NodeInfo("node-a", "x", 0.0, SALES)) is Heard.KNOWN  # ourselves
    assert not directory.has_taker("p1", "sales")
    assert directory.heard(NodeInfo("node-b", "i1", 0.0, SALES)) is Heard.NEW
    assert directory.heard(NodeInfo("node-b", "i1", 2.0, SALES)) is Heard.KNOWN
    assert directory.has_taker("p1", "sales") and not directory.has_taker("p2", "sales")
    assert directory.alive("node-b")
    assert directory.lost(5.0) == []  # 3 s since its last heartbeat: not yet
    assert directory.lost(5.1) == ["node-b"]
    assert directory.lost(5.2) == []  # reported once
    assert not directory.alive("node-b") and not directory.has_taker("p1", "sales")
    assert directory.heard(NodeInfo("node-b", "i1", 9.0)) is Heard.NEW  # back again


def test_a_node_restarted_under_its_id_is_told_apart_by_its_incarnation() -> None:
    directory = Directory("node-a")
    directory.heard(NodeInfo("node-b", "first", 0.0, SALES))
    assert directory.heard(NodeInfo("node-b", "second", 1.0)) is Heard.RESTARTED
    assert not directory.has_taker("p1", "sales")  # the new process serves nothing yet


@pytest.mark.parametrize("url", ["nats://127.0.0.1:4222", "nats://nats.internal",
                                 "nats://user:pw@10.0.0.5:4222"])
def test_bus_url_accepts_nats_urls(url: str) -> None:
    validate_cluster(ClusterConfig(node_id="node-a", bus_url=url))


@pytest.mark.parametrize("url", ["http://127.0.0.1:4222", "127.0.0.1:4222", "nats://",
                                 "nats://h:0", "nats://h:99999", "nats://h:4222/x"])
def test_bus_url_refuses_anything_else_and_says_what_it_wants(url: str) -> None:
    with pytest.raises(ConfigError, match=r'cluster.bus_url must be a NATS URL such as '
                                          r'"nats://127.0.0.1:4222"'):
        validate_cluster(ClusterConfig(bus_url=url))


def test_node_id_is_a_short_plain_name() -> None:
    validate_cluster(ClusterConfig(node_id="node-a.eu_1"))
    for bad in ("node a", "nödé", "x" * 65, "a/b"):
        with pytest.raises(ConfigError, match=r"cluster\.node_id may hold only"):
            validate_cluster(ClusterConfig(node_id=bad))
