"""Keep secrets from the environment out of what agents record.

A kernel may print an API key (``os.environ``, a config file, an echo in a
shell). Everything an agent run keeps — what the model is told, events, the
notebook, artifacts made from outputs — passes through ``Scrubber`` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Scrubber", "secret_values"]

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)", re.IGNORECASE)
_ALWAYS = ("OPENAI_API_KEY", "E2B_API_KEY", "DSAGENT_JUPYTER_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_MIN_LENGTH = 8  # shorter values ("1", "true") would redact ordinary text


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables that look like secrets: name -> value."""
    environ = os.environ if environ is None else environ
    found = {}
    for name, value in environ.items():
        if (name in _ALWAYS or _SECRET_NAME.search(name)) and len(value) >= _MIN_LENGTH:
            found[name] = value
    return found


class Scrubber:
    """Replaces each secret value with ``[redacted NAME]`` in text and nbformat outputs."""

    def __init__(self, secrets: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> None:
        pairs = dict(secret_values() if secrets is None else secrets)
        pairs.update({f"secret-{i}": v for i, v in enumerate(extra) if len(v) >= _MIN_LENGTH})
        # longest first, so a secret containing another is replaced whole
        self._pairs = sorted(pairs.items(), key=lambda kv: -len(kv[1]))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def text(self, text: str) -> str:
        for name, value in self._pairs:
            if value in text:
                text = text.replace(value, f"[redacted {name}]")
        return text

    def value(self, value: Any) -> Any:
        """Scrub strings anywhere inside JSON-like data (outputs, event payloads)."""
        if not self._pairs:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

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
