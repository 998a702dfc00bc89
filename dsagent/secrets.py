"""Which environment variables are secrets, and keeping their values out of kernels and records.

One rule (``looks_secret``) decides both what a kernel's environment never
inherits (``kernel_gateway/kernel_env.py``) and which values are redacted
from what runs store. A kernel may still print a secret it got some other
way (a parameter, a config file, an echo in a shell): everything a run keeps
— events, outputs, artifacts made from them, the executed notebook, its
parameters and error — passes through ``Scrubber`` first
(``artifacts/recorder.py``; agents also scrub what the model is told).

This module imports nothing of dsagent: kernel backends, runs, the recorder
and the agents all use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["NOT_SECRET", "REDACTED", "SECRET_NAME", "Scrubber", "looks_secret", "secret_values"]

#: matched against the upper-cased name: a word that names a credential anywhere, or a family of credentials
#: by prefix, except the settings of those services that say where or how (a base URL, a region): redacting
#: those would make every "cannot connect to ..." message useless
SECRET_NAME = re.compile(
    r"^(?:OPENAI_|E2B_|AWS_|ANTHROPIC_)(?!(?:.*_)?(?:URL|HOST|DOMAIN|PORT|DEBUG|REGION|PROFILE)$)|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH"
)
#: names the rule matches that hold a socket or file path, not a secret
NOT_SECRET = frozenset({"SSH_AUTH_SOCK", "XAUTHORITY"})
_MIN_LENGTH = 8  # shorter values ("1", "true") would redact ordinary text
#: what a redacted value becomes (followed by the variable's name and ``]``)
REDACTED = "[redacted"


def looks_secret(name: str) -> bool:
    """Whether an environment variable of this name holds a secret (``*_API_KEY``, ``*_TOKEN``, ``OPENAI_*``, ...)."""
    upper = name.upper()
    return upper not in NOT_SECRET and SECRET_NAME.search(upper) is not None


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables that look like secrets and are long enough to redact: name -> value."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if looks_secret(name) and len(value) >= _MIN_LENGTH}


class Scrubber:
    """Replaces each secret value with ``[redacted NAME]`` in text and nbformat outputs.

    Built from this process's environment unless ``secrets`` is given; ``extra``
    adds values that live elsewhere (a token from ``dsagent.toml``).
    """

    def __init__(self, secrets: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> None:
        pairs = dict(secret_values() if secrets is None else secrets)
        known = set(pairs.values())
        fresh = [v for v in dict.fromkeys(extra) if v and len(v) >= _MIN_LENGTH and v not in known]
        pairs.update({f"secret-{i}": v for i, v in enumerate(fresh)})
        # longest first, so a secret containing another is replaced whole
        self._pairs = sorted(pairs.items(), key=lambda kv: -len(kv[1]))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def text(self, text: str) -> str:
        for name, value in self._pairs:
            if value in text:
                text = text.replace(value, f"{REDACTED} {name}]")
        return text

    def value(self, value: Any) -> Any:
        """Scrub strings anywhere inside JSON-like data (outputs, event payloads, parameters)."""
        if not self._pairs:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def data(self, data: bytes) -> bytes:
        """Scrub the bytes of a text file (UTF-8); other bytes are returned as they are."""
        if not self._pairs:
            return data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return data
        scrubbed = self.text(text)
        return data if scrubbed == text else scrubbed.encode("utf-8")

    def outputs(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """nbformat outputs with secrets removed from text (binary image data is left as it is)."""
        if not self._pairs:
            return outputs
        cleaned = []
        for out in outputs:
            out = dict(out)
            if "text" in out:
                out["text"] = self.value(out["text"])
            if "traceback" in out:
                out["traceback"] = self.value(out["traceback"])
            if "evalue" in out:
                out["evalue"] = self.text(out["evalue"])
            if "data" in out:
                out["data"] = {
                    mime: (data if mime.startswith("image/") and mime != "image/svg+xml" else self.value(data))
                    for mime, data in out["data"].items()
                }
            cleaned.append(out)
        return cleaned
