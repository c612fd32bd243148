"""The one HTTP Basic parser (platform and agents SDK) and project authentication."""

from __future__ import annotations

import base64

import pytest

from callbox.server.auth import ProjectAuth
from callbox.server.config import Config, Project
from callbox.wire.basic_auth import basic_auth_header, credentials_equal, parse_basic_auth


def encoded(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_round_trip_keeps_colons_and_unicode_in_the_password() -> None:
    assert parse_basic_auth(basic_auth_header("p1", "t:1:é")) == ("p1", "t:1:é")
    assert parse_basic_auth("  basic " + encoded(b"u:") + "  ") == ("u", "")


@pytest.mark.parametrize("header", [
    "",
    "Basic",
    "Basic ",
    "Bearer " + encoded(b"u:p"),
    "Basic " + encoded(b"no-colon"),
    "Basic not*base64",
    "Basic " + encoded(b"\xff\xfe:p"),
])
def test_anything_else_is_none(header: str) -> None:
    assert parse_basic_auth(header) is None


def test_credentials_equal_compares_both_fields() -> None:
    assert credentials_equal(("u", "p"), ("u", "p"))
    assert not credentials_equal(("u", "x"), ("u", "p"))
    assert not credentials_equal(("x", "p"), ("u", "p"))


def test_project_auth_reads_the_projects_at_each_check() -> None:
    config = Config(projects=[Project("p1", "t1")])
    auth = ProjectAuth(config)
    assert auth.authenticate("p1", "t1") == Project("p1", "t1")
    assert auth.authenticate("p1", "t2") is None
    assert auth.authenticate("p2", "t1") is None
    config.projects = [Project("p2", "t2")]  # replaced at run time: known at once
    assert auth.authenticate("p1", "t1") is None
    assert auth.from_authorization(basic_auth_header("p2", "t2")) == Project("p2", "t2")
    assert auth.from_authorization("Basic " + encoded(b"p2")) is None
