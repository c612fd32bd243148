"""[storage]: the S3 keys, the secret from the environment, clear errors for bad values."""

from pathlib import Path

import pytest

from callbox.server.config import ConfigError, load_config

S3 = """
[storage]
s3_endpoint = "http://127.0.0.1:8333"
s3_bucket = "recordings"
s3_access_key = "AK"
s3_secret_key = "from-file"
s3_region = "eu-west-1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callbox.toml"
    path.write_text(text)
    return path


def test_no_endpoint_means_local_disk_only() -> None:
    storage = load_config(env={}).storage
    assert storage.s3_endpoint == "" and storage.s3_region == "us-east-1"
    assert storage.s3_retry_seconds == 2.0


def test_s3_keys_and_the_secret_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, S3 + "s3_retry_seconds = 0.5\n")
    storage = load_config(path, env={}).storage
    assert (storage.s3_endpoint, storage.s3_bucket, storage.s3_access_key,
            storage.s3_secret_key, storage.s3_region) == (
        "http://127.0.0.1:8333", "recordings", "AK", "from-file", "eu-west-1")
    assert storage.s3_retry_seconds == 0.5
    env = {"CALLBOX_STORAGE_S3_SECRET_KEY": "from-env", "CALLBOX_STORAGE_S3_RETRY_SECONDS": "3"}
    storage = load_config(path, env=env).storage
    assert storage.s3_secret_key == "from-env" and storage.s3_retry_seconds == 3.0
    without_secret = S3.replace('s3_secret_key = "from-file"\n', "")
    storage = load_config(write(tmp_path, without_secret), env=env).storage
    assert storage.s3_secret_key == "from-env"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("http://127.0.0.1:8333", "127.0.0.1:8333"), "storage.s3_endpoint must be an http(s) URL"),
        (('s3_bucket = "recordings"', 's3_bucket = ""'), "storage.s3_bucket must be set"),
        (('s3_access_key = "AK"', ""), "storage.s3_access_key must be set"),
        (('s3_secret_key = "from-file"', ""), "CALLBOX_STORAGE_S3_SECRET_KEY"),
        (('s3_region = "eu-west-1"', 's3_region = ""'), "storage.s3_region must be set"),
        (('s3_region = "eu-west-1"', "s3_retry_seconds = 0"), "s3_retry_seconds must be > 0"),
        (('s3_region = "eu-west-1"', 's3_retry_seconds = "soon"'),
         "storage.s3_retry_seconds must be a number"),
        (('s3_region = "eu-west-1"', 's3_regoin = "x"'), "unknown key [storage] s3_regoin"),
    ],
)
def test_bad_s3_settings_say_what_is_wrong(tmp_path: Path, change: tuple[str, str],
                                           message: str) -> None:
    text = S3.replace(*change)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env={})
    assert message in str(caught.value)
