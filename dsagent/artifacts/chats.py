"""Named conversations in the workspace database (``store.chats``).

A chat is a run of kind ``chat`` (so it has an event stream and artifacts like
every run) plus a row of the ``chats`` table (same id) with what users change:
its name, and what it starts turns with: datasets, agent graph, backend. Its
turns are ``agent`` runs whose ``parent_id`` is the chat's id.

The chat run's status says what the chat does: ``running`` while a turn runs
(a crash then is reaped to ``failed`` like any run's), ``idle`` between turns,
``cancelled`` once the chat is deleted with its runs kept. Who holds the chat's
kernel is the run's owner (pid, host, start time), NULL while nobody has it
open: a holder that died frees it, checked when the next process opens it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from dsagent.artifacts.models import Owner, Page, Run, iso_or_none, utcnow
from dsagent.artifacts.rows import RUN_COLUMNS, run_from_row
from dsagent.artifacts.rows import aware_utc, naive_utc
from dsagent.errors import ChatError, DsagentError, NotFound

if TYPE_CHECKING:
    from dsagent.artifacts.store import Store

__all__ = ["ChatRecord", "ChatTable"]

_COLS = "c.id, c.name, c.graph, c.backend, c.datasets, c.created, c.updated, r.status, r.owner_pid, r.owner_host"
_TURNS = "(SELECT count(*) FROM runs t WHERE t.parent_id = c.id AND t.kind = 'agent')"


@dataclass(frozen=True)
class ChatRecord:
    """One chat as stored: name, datasets (``{"param", "path", "source"}``), agent graph, backend, turns."""

    id: int
    name: str
    graph: str
    backend: str
    datasets: list[dict[str, str]] = field(default_factory=list)
    created: datetime | None = None
    updated: datetime | None = None
    status: str = "idle"  # of the chat's run: running = a turn runs, idle = between turns, cancelled = deleted
    owner_pid: int | None = None
    owner_host: str | None = None
    turns: int = 0

    @property
    def held(self) -> bool:
        """Whether a process has (or had, if it died) the chat open: ``ChatTable.holder`` checks it is alive."""
        return self.owner_pid is not None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "graph": self.graph, "backend": self.backend, "datasets": self.datasets,
                "created": iso_or_none(self.created), "updated": iso_or_none(self.updated), "status": self.status, "turns": self.turns,
                "owner_pid": self.owner_pid, "owner_host": self.owner_host}


class ChatTable:
    """Reads and writes of the ``chats`` table; each method is one transaction of the store."""

    def __init__(self, store: "Store") -> None:
        self.store = store

    def create(self, name: str, *, graph: str, backend: str, datasets: Sequence[Mapping[str, str]]) -> ChatRecord:
        """A new chat (its run starts ``idle``, held by nobody)."""
        name = _clean_name(name)
        with self.store.transaction() as tx:
            self._refuse_taken(tx.con, name)
            run = tx.create_run("chat", status="idle", title=name, backend=backend,
                                params={"graph": graph, "data": [d["source"] for d in datasets]})
            _set_holder(tx.con, run.id, None)
            now = naive_utc(utcnow())
            tx.con.execute("INSERT INTO chats VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [run.id, name, graph, backend, json.dumps([dict(d) for d in datasets]), now, now])
            tx.append_events(run.id, [("chat_created", {"name": name, "graph": graph, "backend": backend,
                                                        "datasets": [d["source"] for d in datasets]})])
        return self.get(run.id)

    def get(self, chat: int | str) -> ChatRecord:
        """A chat by id, or by name (a name made of digits is tried as a name first)."""
        with self.store.session(write=False) as con:
            row = con.execute(f"SELECT {_COLS}, {_TURNS} FROM chats c JOIN runs r ON r.id = c.id WHERE c.name = ?",
                              [str(chat)]).fetchone()
            if row is None and str(chat).isdigit():
                row = con.execute(f"SELECT {_COLS}, {_TURNS} FROM chats c JOIN runs r ON r.id = c.id WHERE c.id = ?",
                                  [int(chat)]).fetchone()
        if row is None:
            raise NotFound(f"no chat named or numbered {chat!r}", hint="`dsagent chats ls` lists the chats", what="chat", id=chat)
        return _record(row)

    def list(self, *, limit: int = 50, cursor: str | None = None) -> Page[ChatRecord]:
        """Newest first, ``limit`` per page (keyset on id: pass ``next_cursor`` back)."""
        where, params = "", []
        if cursor is not None:
            try:
                params.append(int(cursor))
            except ValueError:
                raise DsagentError(f"invalid cursor {cursor!r}", hint="pass the next_cursor of a previous page") from None
            where = "WHERE c.id < ?"
        with self.store.session(write=False) as con:
            rows = con.execute(f"SELECT {_COLS}, {_TURNS} FROM chats c JOIN runs r ON r.id = c.id {where} "
                               "ORDER BY c.id DESC LIMIT ?", [*params, limit]).fetchall()
        items = [_record(r) for r in rows]
        return Page(items, str(items[-1].id) if len(items) == limit else None)

    def rename(self, chat_id: int, name: str) -> ChatRecord:
        """Give a chat another name (the chat run's title follows); an event records the change."""
        name = _clean_name(name)
        old = self.get(chat_id)
        if old.name != name:
            with self.store.transaction() as tx:
                self._refuse_taken(tx.con, name)
                tx.con.execute("UPDATE chats SET name = ?, updated = ? WHERE id = ?", [name, naive_utc(utcnow()), chat_id])
                tx.con.execute("UPDATE runs SET title = ? WHERE id = ?", [name, chat_id])
                tx.append_events(chat_id, [("chat_renamed", {"from": old.name, "to": name})])
        return self.get(chat_id)

    def touch(self, chat_id: int, events: Sequence[tuple[str, Mapping[str, Any]]] = (), *, status: str | None = None) -> None:
        """Mark the chat as used now (lists show recent activity), with events for its stream; ``status``:
        the chat run's new one in the same transaction (``running`` when a turn starts, ``idle`` when it ends)."""
        with self.store.transaction() as tx:
            tx.con.execute("UPDATE chats SET updated = ? WHERE id = ?", [naive_utc(utcnow()), chat_id])
            if events:
                tx.append_events(chat_id, events)
            if status is not None:
                tx.update_run_status(chat_id, status)

    def holder(self, chat_id: int) -> Owner | None:
        """The live process that has the chat open, or None (nobody, or a process that died: free to open).
        A holder on another host counts as live (its liveness cannot be checked from here)."""
        with self.store.session(write=False) as con:
            return _live_holder(con, chat_id)

    def set_open(self, chat_id: int, is_open: bool) -> Run:
        """Open: this process becomes the holder of the chat's kernel, unless a live process holds it
        (checked and claimed in one transaction, so two openers cannot both win). Closed: held by nobody.
        Either way the chat is ``idle`` (no turn runs across an open or a close)."""
        with self.store.transaction() as tx:
            row = tx.con.execute("SELECT status, title FROM runs WHERE id = ?", [chat_id]).fetchone()
            if row is None:
                raise NotFound(f"no chat with id {chat_id}", hint="`dsagent chats ls` lists the chats", what="chat", id=chat_id)
            owner = _live_holder(tx.con, chat_id) if is_open else None
            if owner is not None:
                raise ChatError(f"chat {row[1]!r} is already open in process {owner.pid} on {owner.host}",
                                hint="use it there, or close it first (a crashed process's chat is freed at the next open)",
                                reason="open")
            if row[0] not in ("idle", "cancelled"):  # a turn a crash or an older dsagent left "running", "failed" or "queued"
                tx.update_run_status(chat_id, "idle")
            _set_holder(tx.con, chat_id, Owner.current() if is_open else None)
            return run_from_row(tx.con.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", [chat_id]).fetchone())

    def delete(self, chat_id: int, *, purge: bool = False) -> list[int]:
        """Remove the chat from the lists; the run ids deleted (none unless ``purge``).

        Without ``purge`` its runs, notebooks and artifacts stay (the chat run ends ``cancelled``, so
        ``dsagent gc`` may collect it later); with it, the chat's run and its turns' runs go too, with
        their events and artifacts (the bytes nothing else uses are freed by the next ``dsagent gc``).
        """
        self.get(chat_id)
        with self.store.transaction() as tx:
            con = tx.con
            con.execute("DELETE FROM chats WHERE id = ?", [chat_id])
            if not purge:
                tx.update_run_status(chat_id, "cancelled", error="the chat was deleted; its turns and artifacts are kept")
                return []
            ids = [chat_id] + [r[0] for r in con.execute("SELECT id FROM runs WHERE parent_id = ?", [chat_id]).fetchall()]
            for table, key in (("run_events", "run_id"), ("artifacts", "run_id"), ("runs", "id")):
                con.execute(f"DELETE FROM {table} WHERE {key} IN ?", [ids])
        return ids

    @staticmethod
    def _refuse_taken(con: Any, name: str) -> None:
        row = con.execute("SELECT id FROM chats WHERE name = ?", [name]).fetchone()
        if row is not None:
            raise ChatError(f"there is already a chat named {name!r} (chat {row[0]})",
                            hint="choose another name, or open that chat with `dsagent chat NAME`", reason="name_taken",
                            name=name, chat_id=row[0])


def _live_holder(con: Any, chat_id: int) -> Owner | None:
    row = con.execute("SELECT owner_pid, owner_host, owner_started FROM runs WHERE id = ?", [chat_id]).fetchone()
    if row is None or row[0] is None:
        return None
    owner = Owner(row[0], row[1], row[2])
    return None if owner.is_gone() else owner


def _set_holder(con: Any, chat_id: int, owner: Owner | None) -> None:
    con.execute("UPDATE runs SET owner_pid = ?, owner_host = ?, owner_started = ? WHERE id = ?",
                [owner.pid if owner else None, owner.host if owner else None, owner.started if owner else None, chat_id])


def _clean_name(name: str) -> str:
    cleaned = " ".join(str(name).split())
    if not cleaned or len(cleaned) > 200:
        raise DsagentError(f"a chat name must be 1 to 200 characters, not {len(cleaned)}", hint="give a short name, e.g. 'sales q3'")
    return cleaned


def _record(row: tuple[Any, ...]) -> ChatRecord:
    datasets = row[4]
    return ChatRecord(id=row[0], name=row[1], graph=row[2], backend=row[3],
                      datasets=json.loads(datasets) if isinstance(datasets, str) else list(datasets or []),
                      created=aware_utc(row[5]), updated=aware_utc(row[6]), status=row[7], owner_pid=row[8], owner_host=row[9],
                      turns=int(row[10]))
