"""Bringing a workspace file to the schema this dsagent writes: which version it has, and the upgrade.

``schema.py`` holds the DDL text; this runs it (inside the store's write
session), all steps in one transaction, so a failed upgrade leaves the file
as it was.
"""

from __future__ import annotations

import duckdb

from dsagent.artifacts import schema
from dsagent.artifacts.connection import ALIAS

__all__ = ["installed_version", "upgrade"]


def installed_version(con: duckdb.DuckDBPyConnection, alias: str = ALIAS) -> int:
    """The schema version of the attached file ``alias`` (0: an empty file)."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = 'schema_version'", [alias]
    ).fetchone()
    if not exists or not exists[0]:
        return 0
    row = con.execute(f"SELECT max(version) FROM {alias}.schema_version").fetchone()
    return int(row[0] or 0) if row else 0


def upgrade(con: duckdb.DuckDBPyConnection, found: int, alias: str = ALIAS) -> None:
    """Run the migrations after version ``found`` on the attached file ``alias``, in one transaction."""
    con.execute("BEGIN")
    try:
        for step in schema.MIGRATIONS[found:]:
            for statement in step:
                con.execute(statement.format(db=alias))
        con.execute(f"DELETE FROM {alias}.schema_version")
        con.execute(f"INSERT INTO {alias}.schema_version VALUES (?)", [schema.SCHEMA_VERSION])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
