"""Secrets from the environment, from systemd credentials (``$CREDENTIALS_DIRECTORY``) or from a file.

systemd's ``LoadCredential=mqtt-password:/etc/edge-ser/mqtt-password`` makes the secret readable by the
service only, under ``$CREDENTIALS_DIRECTORY/mqtt-password``; config then names ``mqtt-password``. Values
are returned as ``SecretStr`` and never appear in error messages (only the variable, name or path does).
A single trailing newline is stripped from files, since editors and ``echo`` add one.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr

CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"


def secret_from_env(name: str, field: str = "password_env") -> SecretStr:
    """The value of environment variable ``name``; ``ValueError`` naming ``field`` if it is unset."""
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"{field}: environment variable {name!r} is not set; expected it to hold the secret")
    return SecretStr(value)


def secret_from_file(path: str | Path, field: str = "password_file") -> SecretStr:
    """The content of ``path`` without a trailing newline; ``ValueError`` naming ``field`` if unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{field}: cannot read secret file {str(path)!r}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{field}: secret file {str(path)!r} is not UTF-8 text") from err
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return SecretStr(text)


def credential_path(name: str, field: str = "password_credential") -> Path:
    """Where systemd put credential ``name``: ``$CREDENTIALS_DIRECTORY/<name>``."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{field}: credential name {name!r} must be a plain file name (no '/')")
    directory = os.environ.get(CREDENTIALS_DIRECTORY_ENV)
    if not directory:
        raise ValueError(f"{field}: credential {name!r} requested but ${CREDENTIALS_DIRECTORY_ENV} is not set; "
                         "expected the service to run under systemd with LoadCredential= (or use password_file)")
    return Path(directory) / name


def secret_from_credential(name: str, field: str = "password_credential") -> SecretStr:
    """The systemd credential ``name`` (see :func:`credential_path`)."""
    return secret_from_file(credential_path(name, field), field)


def resolve_secret(
    *,
    inline: SecretStr | None = None,
    env: str | None = None,
    credential: str | None = None,
    path: str | Path | None = None,
    prefix: str = "",
) -> SecretStr | None:
    """The secret from whichever single source is set (None if none is); ``prefix`` names the config block."""
    sources = [s for s in (inline, env, credential, path) if s is not None]
    if len(sources) > 1:
        raise ValueError(f"{prefix}password, password_env, password_credential and password_file are "
                         "alternatives; expected at most one to be set")
    if inline is not None:
        return inline
    if env is not None:
        return secret_from_env(env, f"{prefix}password_env")
    if credential is not None:
        return secret_from_credential(credential, f"{prefix}password_credential")
    if path is not None:
        return secret_from_file(path, f"{prefix}password_file")
    return None
