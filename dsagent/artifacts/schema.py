"""Versioned DDL of the workspace database: one list of forward migrations.

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``. A new
release appends a step and never edits an old one, so a workspace written by
any earlier version upgrades in place. The store runs the steps (it is the
only module that executes SQL); this module only holds the text.

Every statement uses ``{db}`` for the attached database's alias, because the
store attaches the file to a long-lived in-memory DuckDB instance instead of
opening it as the main database (see ``store.py`` for why). Times are UTC
``TIMESTAMP`` values (``TIMESTAMPTZ`` would make DuckDB's Python client need pytz).
"""

from __future__ import annotations

__all__ = [
    "MIGRATIONS", "SCHEMA_VERSION", "TABLES", "RUN_KINDS", "RUN_STATUSES", "TERMINAL_STATUSES", "ARTIFACT_KINDS",
    "BLOB_DB_DDL", "BLOB_SHARD_MAX_BYTES", "BLOB_SHARD_MAX_BLOBS", "shard_table", "shard_ddl",
]

RUN_KINDS = ("agent", "notebook", "batch", "batch-child", "exec", "chat")
# idle: a chat between turns; unverified: an agent run that ended with an answer its outputs do not support
# (graphs/grounding.py)
RUN_STATUSES = ("queued", "running", "idle", "succeeded", "failed", "unverified", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "unverified", "cancelled")
ARTIFACT_KINDS = ("image", "table", "html", "json", "text", "file", "notebook")

_V1 = (
    """CREATE TABLE {db}.schema_version (version INTEGER NOT NULL)""",
    # ids come from here, not from DuckDB sequences: a table survives the
    # copy that gc uses to give disk space back, and ids are never reused
    """CREATE TABLE {db}.id_counters (name VARCHAR NOT NULL, last_id BIGINT NOT NULL)""",
    """INSERT INTO {db}.id_counters VALUES ('runs', 0), ('artifacts', 0)""",
    """CREATE TABLE {db}.runs (
        id BIGINT NOT NULL,
        kind VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        title VARCHAR,
        params JSON,
        backend VARCHAR,
        parent_id BIGINT,
        schedule_id VARCHAR,
        created TIMESTAMP NOT NULL,
        started TIMESTAMP,
        finished TIMESTAMP,
        error VARCHAR,
        owner_pid INTEGER,
        owner_host VARCHAR,
        owner_started DOUBLE
    )""",
    """CREATE TABLE {db}.run_events (
        run_id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        time TIMESTAMP NOT NULL,
        type VARCHAR NOT NULL,
        payload JSON
    )""",
    """CREATE TABLE {db}.artifacts (
        id BIGINT NOT NULL,
        run_id BIGINT NOT NULL,
        cell INTEGER,
        name VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        mime VARCHAR NOT NULL,
        size BIGINT NOT NULL,
        sha256 VARCHAR NOT NULL,
        created TIMESTAMP NOT NULL,
        tags VARCHAR[],
        metadata JSON
    )""",
    # where each sha256's bytes are: shard = a blob_data_<n> table of the blob
    # database, NULL = a file in <workspace>/blobs/ (above the inline limit).
    # No PRIMARY KEYs anywhere: DuckDB loads and rewrites a whole ART index per
    # attach/checkpoint; ids come from id_counters and the store dedupes blobs.
    """CREATE TABLE {db}.blobs (
        sha256 VARCHAR NOT NULL,
        size BIGINT NOT NULL,
        shard INTEGER,
        created TIMESTAMP NOT NULL
    )""",
)

# schedules (runs/scheduler.py): one row per named schedule; next_fire is what the
# scheduler claims with a compare-and-set, so two scheduler processes never both
# fire one firing. scheduler_leases says which process is firing (one row).
_V2_SCHEDULES = (
    """CREATE TABLE {db}.schedules (
        name VARCHAR NOT NULL,
        cron VARCHAR NOT NULL,
        timezone VARCHAR NOT NULL,
        target JSON NOT NULL,
        paused BOOLEAN NOT NULL,
        overlap VARCHAR NOT NULL,
        misfire VARCHAR NOT NULL,
        notify_url VARCHAR,
        notify_on VARCHAR NOT NULL,
        version BIGINT NOT NULL,
        created TIMESTAMP NOT NULL,
        updated TIMESTAMP NOT NULL,
        next_fire TIMESTAMP,
        last_fire TIMESTAMP,
        last_run_id BIGINT,
        pending BOOLEAN NOT NULL
    )""",
    """CREATE TABLE {db}.scheduler_leases (
        name VARCHAR NOT NULL,
        owner VARCHAR NOT NULL,
        pid INTEGER,
        host VARCHAR,
        started DOUBLE,
        acquired TIMESTAMP NOT NULL,
        expires TIMESTAMP NOT NULL
    )""",
)

# Chats (``chats.py``): a chat is a run of kind ``chat`` (its events: turns started and finished, renames,
# restores; its artifacts: the exported notebook); its turns are ``agent`` runs whose parent it is. This
# table holds what a run row cannot: the name users rename, the datasets and the agent it starts turns with.
_V3_CHATS = (
    """CREATE TABLE {db}.chats (
        id BIGINT NOT NULL,
        name VARCHAR NOT NULL,
        graph VARCHAR NOT NULL,
        backend VARCHAR NOT NULL,
        datasets JSON NOT NULL,
        created TIMESTAMP NOT NULL,
        updated TIMESTAMP NOT NULL
    )""",
)

# where bytes written since v4 are: record at byte ``pack_offset`` of pack file
# ``pack`` (``packs.py``); shard and pack both NULL = a file in <workspace>/blobs/
_V4_BLOB_PACKS = (
    """ALTER TABLE {db}.blobs ADD COLUMN pack INTEGER""",
    """ALTER TABLE {db}.blobs ADD COLUMN pack_offset BIGINT""",
)

# a chat's run says what the chat does: ``running`` while a turn runs, else ``idle``; who holds its kernel is
# the run's owner columns (NULL: nobody). Before v5, ``running`` meant "open in a process" and ``queued`` "closed",
# so Runs and the Overview showed a chat nobody used as running or queued
_V5_CHAT_IDLE = (
    """UPDATE {db}.runs SET status = 'idle',
        owner_pid = CASE WHEN status = 'running' THEN owner_pid END,
        owner_host = CASE WHEN status = 'running' THEN owner_host END,
        owner_started = CASE WHEN status = 'running' THEN owner_started END
    WHERE kind = 'chat' AND status IN ('queued', 'running')""",
)

#: forward migrations; index i upgrades version i to i + 1
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2_SCHEDULES, _V3_CHATS, _V4_BLOB_PACKS, _V5_CHAT_IDLE)
SCHEMA_VERSION = len(MIGRATIONS)

#: tables in dependency order (copied in this order when gc compacts the file)
TABLES = ("schema_version", "id_counters", "runs", "run_events", "artifacts", "blobs", "schedules", "scheduler_leases", "chats")

# -- the blob database (dsagent-blobs.duckdb) ---------------------------------
#
# Inline bytes live in a second file so that listing runs and artifacts never
# replays or loads blob bytes, and in bounded tables ("shards"): DuckDB
# rewrites a table's whole open row group at every checkpoint, so one
# ever-growing blob table made every write slower as the workspace grew.
# Uncompressed: a compressed column is re-analysed at each checkpoint too.

BLOB_SHARD_MAX_BYTES = 8 << 20
BLOB_SHARD_MAX_BLOBS = 4096

BLOB_DB_DDL = ("""CREATE TABLE IF NOT EXISTS {db}.blob_shards (shard INTEGER NOT NULL, bytes BIGINT NOT NULL, blobs INTEGER NOT NULL)""",)


def shard_table(shard: int) -> str:
    return f"blob_data_{shard}"


def shard_ddl(db: str, shard: int) -> str:
    return f"CREATE TABLE {db}.{shard_table(shard)} (sha256 VARCHAR NOT NULL, data BLOB USING COMPRESSION uncompressed)"
