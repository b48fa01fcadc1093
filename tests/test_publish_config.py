"""Publisher config models and secret resolution (environment, systemd credentials, files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from edge_ser.publish import (
    MqttPublisherConfig,
    MqttTlsConfig,
    PublisherConfig,
    StdoutPublisherConfig,
    make_publisher,
)
from edge_ser.publish.credentials import resolve_secret

SECRET = "hunter2-but-longer"


def test_union_picks_backend_by_type() -> None:
    adapter: TypeAdapter[MqttPublisherConfig | StdoutPublisherConfig] = TypeAdapter(PublisherConfig)
    assert isinstance(adapter.validate_python({"type": "mqtt", "host": "broker"}), MqttPublisherConfig)
    assert isinstance(adapter.validate_python({"type": "stdout"}), StdoutPublisherConfig)
    with pytest.raises(ValidationError, match="mqtt"):
        adapter.validate_python({"type": "kafka"})
    with pytest.raises(ValidationError, match="hostname"):
        adapter.validate_python({"type": "mqtt", "hostname": "typo"})  # extra="forbid"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prefix": "a/#"}, "wildcard"),
        ({"device_id": "pi/1"}, "separator"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_max_s"),
        ({"username": "u", "password": SECRET, "password_env": "X"}, "at most one"),
        ({"password_env": "X"}, "username"),
        ({"port": 70000}, "port"),
        ({"tls": {"key_file": "k.pem"}}, "cert_file"),
    ],
)
def test_mqtt_config_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        MqttPublisherConfig(**fields)  # type: ignore[arg-type]
    assert SECRET not in str(err.value)


def test_secret_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SER_PW", SECRET)
    assert resolve_secret(env="EDGE_SER_PW").get_secret_value() == SECRET  # type: ignore[union-attr]
    (tmp_path / "pw").write_text(SECRET + "\n")
    assert resolve_secret(path=tmp_path / "pw").get_secret_value() == SECRET  # type: ignore[union-attr]
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = MqttPublisherConfig(username="agent", password_credential="pw")
    assert config.resolve_password().get_secret_value() == SECRET  # type: ignore[union-attr]
    assert resolve_secret() is None


def test_secret_errors_name_the_source_not_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_SER_MISSING", raising=False)
    with pytest.raises(ValueError, match=r"EDGE_SER_MISSING.*not set"):
        MqttPublisherConfig(username="u", password_env="EDGE_SER_MISSING").resolve_password()
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ValueError, match="CREDENTIALS_DIRECTORY"):
        resolve_secret(credential="mqtt-password")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ValueError, match="plain file name"):
        resolve_secret(credential="../etc/shadow")
    with pytest.raises(ValueError, match="cannot read secret file"):
        resolve_secret(credential="absent")


def test_publisher_checks_secrets_and_tls_files_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="password_file"):
        make_publisher(MqttPublisherConfig(username="u", password_file=tmp_path / "none"), "pi-1")
    with pytest.raises(ValueError, match=r"tls\.ca_file"):
        make_publisher(MqttPublisherConfig(tls=MqttTlsConfig(ca_file=tmp_path / "ca.pem")), "pi-1")
    with pytest.raises(ValueError, match="device_id"):
        make_publisher(StdoutPublisherConfig(), "pi+1")


def test_spool_path_defaults_to_systemd_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert MqttPublisherConfig().spool.resolved_path() == tmp_path / "mqtt-spool.sqlite3"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert MqttPublisherConfig().spool.resolved_path() == Path("mqtt-spool.sqlite3")


def test_secrets_hidden_in_repr_and_dumps() -> None:
    config = MqttPublisherConfig(username="agent", password=SECRET)
    assert SECRET not in repr(config) and SECRET not in config.model_dump_json()
    assert config.resolve_password().get_secret_value() == SECRET  # type: ignore[union-attr]
