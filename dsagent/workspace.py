"""The workspace folder (``DSAGENT_HOME``, default ``./.dsagent``) and its paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dsagent.errors import WorkspaceError
from dsagent.settings import Settings

__all__ = ["Workspace"]


@dataclass(frozen=True)
class Workspace:
    """Paths inside one workspace; ``ensure()`` creates the folders."""

    home: Path

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "Workspace":
        settings = settings or Settings()
        return cls(Path(settings.home).expanduser().resolve())

    @property
    def db_path(self) -> Path:
        return self.home / "dsagent.duckdb"

    @property
    def blobs_dir(self) -> Path:
        """Content-addressed bytes of artifacts too large to keep in DuckDB."""
        return self.home / "blobs"

    @property
    def sessions_dir(self) -> Path:
        """Work dirs of kernel sessions (the kernel's cwd)."""
        return self.home / "sessions"

    @property
    def outputs_dir(self) -> Path:
        """Files written for the user by CLI commands (e.g. images of ``dsagent exec``)."""
        return self.home / "outputs"

    @property
    def notebooks_dir(self) -> Path:
        """Notebooks uploaded in the dashboard or saved from chats, one ``.ipynb`` each (the Notebooks page lists them)."""
        return self.home / "notebooks"

    @property
    def checkpoints_path(self) -> Path:
        return self.home / "checkpoints.sqlite"

    @property
    def config_path(self) -> Path:
        return self.home / "dsagent.toml"

    def ensure(self) -> "Workspace":
        """Create the workspace folders if missing; explain if that is impossible."""
        if self.home.exists() and not self.home.is_dir():
            raise WorkspaceError(
                f"workspace path {self.home} exists and is not a folder",
                hint="set DSAGENT_HOME to a folder (it is created if missing)",
                path=str(self.home),
            )
        try:
            for folder in (self.home, self.blobs_dir, self.sessions_dir, self.outputs_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot create workspace folder {self.home}: {exc.strerror}",
                hint="set DSAGENT_HOME to a writable folder",
                path=str(self.home),
            ) from exc
        return self
