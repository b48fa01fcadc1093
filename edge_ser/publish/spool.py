"""A bounded on-disk message spool (SQLite, WAL) and the in-flight window that sends from it.

Every MQTT message is appended to the spool first and deleted only when the broker acknowledges it, so
messages produced while the broker is down are delivered after reconnection, in order, and survive an agent
restart: a new publisher opening the same file sends what the old one had not delivered (at-least-once;
consumers de-duplicate by the event id in the payload).

The spool is bounded in messages and in bytes (topic + payload). When full it drops the oldest
*latest-value* message (state, stats, stream status, availability, Home Assistant discovery: a newer one
supersedes it anyway); only
when none is left does it drop the oldest event or segment. An oversized message (bigger than the byte bound
on its own) is dropped on arrival. Drops are returned to the caller, which counts and logs them.

Nothing here touches the network or reads the clock: :class:`SendWindow` decides what to send next from
connect / disconnect / ack notifications, and :class:`DropReporter` takes ``now`` as an argument.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_ser.publish.base import EncodedMessage

DROP_FIRST_KINDS: frozenset[str] = frozenset({"state", "stats", "stream_status", "availability", "discovery"})
"""Latest-value kinds: dropped before any event or segment when the spool is full."""

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    size INTEGER NOT NULL,
    drop_first INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_drop_first ON messages (drop_first, seq);
"""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """A message stored in the spool, with its position ``seq`` (increasing, never reused)."""

    seq: int
    message: EncodedMessage


def message_size(message: EncodedMessage) -> int:
    """Bytes a message counts against the spool's byte bound (UTF-8 topic + payload)."""
    return len(message.topic.encode("utf-8")) + len(message.payload)


class Spool:
    """FIFO of encoded messages in one SQLite file, bounded in count and bytes. Not thread-safe: one owner."""

    def __init__(self, path: str | Path, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1:
            raise ValueError(f"spool max_messages is {max_messages}; expected at least 1")
        if max_bytes < 1:
            raise ValueError(f"spool max_bytes is {max_bytes}; expected at least 1")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0.25)
            # Exclusive: one agent per spool file (a second one fails here instead of interleaving sends).
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ValueError(f"spool {self.path} has schema version {version}; expected {SCHEMA_VERSION}")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='messages'").fetchone()
        except (sqlite3.Error, OSError) as err:
            hint = " (is another edge-ser using it?)" if "locked" in str(err) else ""
            raise ValueError(f"cannot open spool file {self.path}: {err}{hint}") from err
        self._count: int = count
        self._bytes: int = size
        self._last_seq: int = row[0] if row else 0
        self.startup_drops: list[str] = self._enforce_bounds()  # the bounds may have shrunk since last run

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes of all stored messages (topic + payload), the quantity bounded by ``max_bytes``."""
        return self._bytes

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the newest message ever appended (0 if none), even if it was since removed."""
        return self._last_seq

    def oldest_seq(self) -> int | None:
        """The ``seq`` of the oldest stored message, or None when the spool is empty."""
        row = self._db.execute("SELECT MIN(seq) FROM messages").fetchone()
        return row[0]

    def append(self, message: EncodedMessage) -> list[str]:
        """Store ``message``; returns the kinds of the messages dropped to stay within bounds."""
        return self.append_many([message])

    def append_many(self, messages: Iterable[EncodedMessage]) -> list[str]:
        """Store ``messages`` in order in one transaction; returns the kinds dropped to stay within bounds."""
        dropped: list[str] = []
        rows = []
        for m in messages:
            size = message_size(m)
            if size > self.max_bytes:
                dropped.append(m.kind)  # would evict everything else and still not fit
                continue
            rows.append((m.kind, m.topic, m.payload, m.qos, int(m.retain), size, int(m.kind in DROP_FIRST_KINDS)))
        if not rows:
            return dropped
        with self._transaction():
            for row in rows:
                cur = self._db.execute(
                    "INSERT INTO messages (kind, topic, payload, qos, retain, size, drop_first) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                self._last_seq = cur.lastrowid or self._last_seq
                self._count += 1
                self._bytes += row[5]
            dropped.extend(self._evict())
        return dropped

    def peek(self, after_seq: int = 0, limit: int = 100) -> list[SpooledMessage]:
        """Up to ``limit`` stored messages with ``seq > after_seq``, oldest first."""
        rows = self._db.execute(
            "SELECT seq, kind, topic, payload, qos, retain FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit)).fetchall()
        return [SpooledMessage(seq, EncodedMessage(kind, topic, bytes(payload), qos, bool(retain)))
                for seq, kind, topic, payload, qos, retain in rows]

    def ack(self, seq: int) -> bool:
        """Remove the message ``seq`` (delivered); False if it was not there (already dropped or acked)."""
        row = self._db.execute("SELECT size FROM messages WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return False
        self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        self._count -= 1
        self._bytes -= row[0]
        return True

    def close(self) -> None:
        """Checkpoint the WAL and close the file."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; on error roll back the file and the in-memory counters together."""
        saved = (self._count, self._bytes, self._last_seq)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._count, self._bytes, self._last_seq = saved
            raise
        self._db.execute("COMMIT")

    def _enforce_bounds(self) -> list[str]:
        if self._count <= self.max_messages and self._bytes <= self.max_bytes:
            return []
        with self._transaction():
            return self._evict()

    def _evict(self) -> list[str]:
        dropped: list[str] = []
        while self._count > self.max_messages or self._bytes > self.max_bytes:
            row = self._db.execute(
                "SELECT seq, kind, size FROM messages WHERE drop_first = 1 ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                row = self._db.execute("SELECT seq, kind, size FROM messages ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM messages WHERE seq = ?", (row[0],))
            self._count -= 1
            self._bytes -= row[2]
            dropped.append(row[1])
        return dropped


class SendWindow:
    """Which spooled messages to send next, with at most ``size`` unacknowledged at a time.

    After a disconnect the MQTT client itself re-sends its unacknowledged messages on the next connection
    (in their original order), so the window sends nothing new until those are acknowledged: a new message
    never overtakes an older one on the wire.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"in-flight window size is {size}; expected at least 1")
        self.size = size
        self.connected = False
        self._inflight: dict[int, int] = {}  # transport message id -> spool seq
        self._last_sent = 0  # seq of the newest message handed to the transport
        self._holding = False  # reconnected, waiting for the re-sent backlog to be acked

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def on_connect(self) -> None:
        self.connected = True

    def on_disconnect(self) -> None:
        self.connected = False
        if self._inflight:
            self._holding = True

    def wanted(self) -> int:
        """How many new messages may be handed to the transport now."""
        if not self.connected or self._holding:
            return 0
        return self.size - len(self._inflight)

    @property
    def last_sent(self) -> int:
        return self._last_sent

    def sent(self, mid: int, seq: int) -> None:
        """Record that spool message ``seq`` went out as transport message ``mid``."""
        self._inflight[mid] = seq
        self._last_sent = max(self._last_sent, seq)

    def acked(self, mid: int) -> int | None:
        """The spool seq acknowledged by transport message ``mid`` (None if it was not one of ours)."""
        seq = self._inflight.pop(mid, None)
        if not self._inflight:
            self._holding = False
        return seq


class DropReporter:
    """Accumulates drop counts by kind and says when to log them (at most once per ``interval`` seconds)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.totals: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._last_report: float | None = None

    def add(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            self.totals[kind] = self.totals.get(kind, 0) + 1
            self._pending[kind] = self._pending.get(kind, 0) + 1

    def due(self, now: float) -> dict[str, int] | None:
        """Drops since the last report, if any and ``interval`` has passed since it; resets them."""
        if not self._pending:
            return None
        if self._last_report is not None and now - self._last_report < self.interval:
            return None
        pending, self._pending = self._pending, {}
        self._last_report = now
        return pending

    def count(self, *, drop_first: bool) -> int:
        """Total drops of latest-value kinds (``drop_first=True``) or of events and segments."""
        return sum(n for kind, n in self.totals.items() if (kind in DROP_FIRST_KINDS) == drop_first)
