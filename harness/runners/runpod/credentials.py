"""Credentials of a RunPod run, and the redaction that keeps them out of every output.

- ``RUNPOD_API_KEY``: the environment, else ``.env`` (python-dotenv). The SDK does not read that
  variable itself; ``RunpodApi`` sets ``runpod.api_key``.
- ``HF_TOKEN``: same sources; given to the pod as pod environment (never on a command line).
  A pod's environment is visible in the RunPod console and API; with ``RUNPOD_HF_TOKEN_SECRET``
  naming a RunPod secret (console: Secrets) that holds the token, the pod gets
  ``{{ RUNPOD_SECRET_<name> }}``, which RunPod fills in inside the pod, and the token never
  leaves this machine.
- ``SSH_KEY_PATH`` (default ``~/.ssh/id_ed25519``): the private key used to log in; its public
  half goes to the pod as ``PUBLIC_KEY``.

Nothing here prints a secret; ``Redactor`` replaces their values in any text shown or stored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

DEFAULT_SSH_KEY = "~/.ssh/id_ed25519"


@dataclass(frozen=True, repr=False)
class Credentials:
    api_key: str | None
    hf_token: str | None
    ssh_key_path: Path | None
    public_key: str | None
    hf_secret: str | None = None  # the name of a RunPod secret holding the HF token

    def pod_hf_token(self) -> str | None:
        """What the pod's HF_TOKEN is set to: a RunPod secret reference, else the token."""
        if self.hf_secret:
            return "{{ RUNPOD_SECRET_" + self.hf_secret + " }}"
        return self.hf_token

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.api_key, self.hf_token) if s)

    def __repr__(self) -> str:  # never show the values
        return (
            f"Credentials(api_key={'set' if self.api_key else None}, "
            f"hf_token={'set' if self.hf_token else None}, ssh_key_path={self.ssh_key_path})"
        )


class Redactor:
    """Replaces every registered secret value in a text by ``***``."""

    def __init__(self, *secrets: str | None):
        self._secrets: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)

    def __call__(self, text) -> str:
        text = str(text)
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        return text


def _dotenv_values(dotenv_path: str | Path | None) -> dict:
    try:
        from dotenv import dotenv_values, find_dotenv
    except ImportError:  # python-dotenv is a dependency; tolerate its absence all the same
        return {}
    path = str(dotenv_path) if dotenv_path else find_dotenv(usecwd=True)
    if not path or not Path(path).is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v}


def load_credentials(
    *,
    need_api_key: bool = True,
    need_ssh: bool = True,
    need_hf_for: list[str] | tuple[str, ...] = (),
    environ=None,
    dotenv_path: str | Path | None = None,
) -> Credentials:
    """Read the credentials; raise ``HarnessError`` (one sentence) for the first one missing.

    ``need_hf_for``: ids of gated models, which need ``HF_TOKEN``.
    """
    env = os.environ if environ is None else environ
    dot = _dotenv_values(dotenv_path)

    def value(name):
        return env.get(name) or dot.get(name) or None

    api_key = value("RUNPOD_API_KEY")
    if need_api_key and not api_key:
        raise HarnessError(
            "RUNPOD_API_KEY is not set: export it or put `RUNPOD_API_KEY=...` in .env before "
            "using --runpod."
        )
    hf_token = value("HF_TOKEN")
    hf_secret = value("RUNPOD_HF_TOKEN_SECRET")
    if hf_secret and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", hf_secret):
        raise HarnessError(
            f"RUNPOD_HF_TOKEN_SECRET must be a RunPod secret name (letters, digits, _ and -), "
            f"not {hf_secret!r}."
        )
    if need_hf_for and not (hf_token or hf_secret):
        raise HarnessError(
            f"{', '.join(need_hf_for)} {'is' if len(need_hf_for) == 1 else 'are'} gated and "
            "HF_TOKEN is not set: export HF_TOKEN (or put it in .env) with access granted."
        )
    key_path = public = None
    if need_ssh:
        key_path = Path(os.path.expanduser(value("SSH_KEY_PATH") or DEFAULT_SSH_KEY))
        public = public_key_of(key_path)
    return Credentials(api_key, hf_token, key_path, public, hf_secret)


def public_key_of(key_path: Path) -> str:
    """The one-line OpenSSH public key of ``key_path`` (from ``<key>.pub`` or the key itself)."""
    if not key_path.is_file():
        raise HarnessError(
            f"SSH key {key_path} not found: create one with `ssh-keygen -t ed25519` or point "
            "SSH_KEY_PATH at yours."
        )
    pub = Path(str(key_path) + ".pub")
    if pub.is_file():
        text = pub.read_text().strip()
        if text:
            return text.splitlines()[0]
    key = load_private_key(key_path)
    return f"{key.get_name()} {key.get_base64()}"


def load_private_key(key_path: Path):
    import paramiko

    try:
        return paramiko.PKey.from_path(str(key_path))
    except paramiko.PasswordRequiredException:
        raise HarnessError(
            f"SSH key {key_path} is passphrase-protected: point SSH_KEY_PATH at a key without "
            "a passphrase (the pods are reached unattended)."
        ) from None
    except (paramiko.SSHException, OSError, ValueError) as err:
        raise HarnessError(
            f"cannot read SSH key {key_path} ({type(err).__name__}); point SSH_KEY_PATH at an "
            "OpenSSH private key."
        ) from None
