"""Write all artifacts of a run to a folder or a .zip, with a ``manifest.json``.

Artifact names come from user code (file paths, titles) and may hold ``/``,
``\\`` or ``..``; every name is flattened to one safe file name and checked to
land inside the export folder, so an export never writes anywhere else.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

from dsagent.artifacts.models import Artifact
from dsagent.artifacts.store import Store
from dsagent.errors import DsagentError

__all__ = ["export_run", "safe_file_name"]

_UNSAFE = re.compile(r"[\x00-\x1f/\\:*?\"<>|]+")


def safe_file_name(artifact: Artifact) -> str:
    """``<id>-<name>`` with separators, ``..`` and control characters replaced; never a path."""
    name = _UNSAFE.sub("_", artifact.name).replace("..", "_").strip(". ")
    return f"{artifact.id}-{name[:150] or 'artifact'}"


def _all_artifacts(store: Store, run_id: int) -> list[Artifact]:
    items: list[Artifact] = []
    cursor = None
    while True:
        page = store.list_artifacts(run_id=run_id, limit=500, cursor=cursor)
        items.extend(page.items)
        if page.next_cursor is None:
            return sorted(items, key=lambda a: a.id)
        cursor = page.next_cursor


def export_run(store: Store, run_id: int, target: str | Path) -> Path:
    """Export run ``run_id``: a folder, or a zip when ``target`` ends with ``.zip``. Returns ``target``."""
    run = store.get_run(run_id)  # NotFound for unknown ids
    artifacts = _all_artifacts(store, run_id)
    target = Path(target)
    manifest: dict[str, Any] = {"run": run.to_json(), "artifacts": []}
    try:
        if target.suffix.lower() == ".zip":
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for artifact in artifacts:
                    name = safe_file_name(artifact)
                    archive.writestr(name, store.read_bytes(artifact.id))
                    manifest["artifacts"].append({**artifact.to_json(), "file": name})
                archive.writestr("manifest.json", json.dumps(manifest, indent=2))
            return target
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        for artifact in artifacts:
            name = safe_file_name(artifact)
            path = (root / name).resolve()
            if path.parent != root:  # cannot happen with safe_file_name; checked anyway
                raise DsagentError(f"artifact name {artifact.name!r} would leave the export folder", hint="report this as a bug")
            path.write_bytes(store.read_bytes(artifact.id))
            manifest["artifacts"].append({**artifact.to_json(), "file": name})
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        return target
    except OSError as exc:
        raise DsagentError(f"cannot export to {target}: {exc.strerror or exc}", hint="pick a writable folder or .zip path") from exc
