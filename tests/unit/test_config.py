"""Configuration: file, environment and flag precedence; clear errors for bad values."""

from pathlib import Path

import pytest

from callbox.server.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callbox.toml"
    path.write_text(text)
    return path


def test_example_config_loads_with_every_documented_key():
    config = load_config(REPO / "callbox.toml", env={})
    assert config.sip.listen == "127.0.0.1:5060"
    assert config.sip.rtp_ports == "20000-20999"
    assert config.http.listen == "127.0.0.1:8443"
    assert config.http.public_url == "https://127.0.0.1:8443"
    assert config.storage.data_dir == "./callbox-data"
    assert [p.id for p in config.projects] == ["your-project-id"]
    assert [r.number for r in config.routes] == ["prompt", "voicemail", "agent"]
    assert config.route_for("voicemail").context == "default"
    assert config.route_for("agent").swml_url.startswith("http://user:pass@")
    assert config.route_for("nobody") is None


def test_env_overrides_file_and_flags_override_env(tmp_path):
    path = write(tmp_path, '[sip]\nlisten = "127.0.0.1:5070"\n')
    env = {"CALLBOX_SIP_LISTEN": "127.0.0.1:5080", "CALLBOX_SIP_MAX_CALLS": "7"}
    assert load_config(path, env=env).sip.listen == "127.0.0.1:5080"
    assert load_config(path, env=env).sip.max_calls == 7
    config = load_config(path, env=env, overrides={"sip.listen": "127.0.0.1:5090"})
    assert config.sip.listen == "127.0.0.1:5090"


def test_first_matching_route_wins_and_star_matches_anything(tmp_path):
    path = write(tmp_path, """
[[routes]]
number = "a"
swml = "{}"
[[routes]]
number = "*"
context = "default"
""")
    config = load_config(path, env={})
    assert config.route_for("a").swml == "{}"
    assert config.route_for("zzz").context == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[sip]\nlisten = "nohost"\n', "sip.listen must be HOST:PORT"),
        ('[sip]\nrtp_ports = "30000-20000"\n', "sip.rtp_ports"),
        ('[sip]\nlistne = "1"\n', "unknown key [sip] listne"),
        ('[bogus]\n', "unknown section [bogus]"),
        ('[[routes]]\nnumber = "x"\n', "exactly one of swml, swml_url or context"),
        ('[[routes]]\nnumber = "x"\nswml = "{}"\ncontext = "d"\n', "exactly one of"),
        ('[[projects]]\nid = "p"\n', "id and token"),
        ('[sip]\nmax_calls = "many"\n', "sip.max_calls must be an integer"),
        ('[http]\ntls_cert = "a.pem"\n', "given together"),
        ("not toml = = =", "not valid TOML"),
    ],
)
def test_bad_config_says_what_is_wrong(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text), env={})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})
