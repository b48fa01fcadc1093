"""The on-disk spool and the send window, without a broker."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_ser.publish.base import EncodedMessage
from edge_ser.publish.spool import DROP_FIRST_KINDS, DropReporter, SendWindow, Spool, message_size


def msg(kind: str, n: int, size: int = 10) -> EncodedMessage:
    payload = f'{{"n":{n}}}'.encode().ljust(size)
    return EncodedMessage(kind, f"edge-ser/pi/mic/{kind}", payload, 1, kind == "state")


def test_fifo_ack_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, max_messages=100, max_bytes=100_000)
    assert spool.append_many(msg("event", n) for n in range(5)) == []
    assert [s.message.payload for s in spool.peek()] == [msg("event", n).payload for n in range(5)]
    first = spool.peek(limit=2)
    assert spool.ack(first[0].seq) and not spool.ack(first[0].seq)
    assert [s.seq for s in spool.peek(after_seq=first[1].seq)] == [s.seq for s in spool.peek()][1:]
    last_seq = spool.last_seq
    spool.close()

    reopened = Spool(path, max_messages=100, max_bytes=100_000)
    assert len(reopened) == 4
    assert [s.message for s in reopened.peek()] == [msg("event", n) for n in range(1, 5)]
    assert reopened.size_bytes == sum(message_size(msg("event", n)) for n in range(1, 5))
    reopened.append(msg("event", 5))
    assert reopened.last_seq == last_seq + 1  # positions are never reused
    reopened.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_message_bound_drops_states_before_events(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_messages=4, max_bytes=100_000)
    assert spool.append_many([msg("event", 0), msg("state", 1), msg("event", 2), msg("stats", 3)]) == []
    assert spool.append(msg("event", 4)) == ["state"]
    assert spool.append(msg("segment", 5)) == ["stats"]
    assert [s.message.kind for s in spool.peek()] == ["event", "event", "event", "segment"]
    # no state left: the oldest event goes, and a new state cannot push out events
    assert spool.append(msg("state", 6)) == ["state"]
    assert spool.append(msg("event", 7)) == ["event"]
    assert [s.message.payload.strip() for s in spool.peek()] == [b'{"n":2}', b'{"n":4}', b'{"n":5}', b'{"n":7}']
    assert len(spool) == 4


def test_byte_bound_and_oversized_message(tmp_path: Path) -> None:
    one = message_size(msg("event", 0, size=100))
    spool = Spool(tmp_path / "s.sqlite3", max_messages=1000, max_bytes=3 * one)
    spool.append_many([msg("event", 0, 100), msg("state", 1, 100), msg("event", 2, 100)])
    assert spool.append(msg("event", 3, 100)) == ["state"]
    assert spool.size_bytes <= 3 * one
    assert spool.append(msg("event", 9, size=4 * one)) == ["event"]  # too big on its own: dropped on arrival
    assert len(spool) == 3


def test_shrunk_bounds_apply_at_open(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    spool = Spool(path, max_messages=10, max_bytes=100_000)
    spool.append_many([msg("state", 0), msg("event", 1), msg("state", 2), msg("event", 3)])
    spool.close()
    smaller = Spool(path, max_messages=2, max_bytes=100_000)
    assert smaller.startup_drops == ["state", "state"]
    assert [s.message.kind for s in smaller.peek()] == ["event", "event"]


def test_one_owner_per_spool_file(tmp_path: Path) -> None:
    owner = Spool(tmp_path / "s.sqlite3", max_messages=10, max_bytes=1000)
    with pytest.raises(ValueError, match="another edge-ser"):
        Spool(tmp_path / "s.sqlite3", max_messages=10, max_bytes=1000)
    owner.close()
    Spool(tmp_path / "s.sqlite3", max_messages=10, max_bytes=1000).close()


def test_bad_bounds_and_unopenable_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        Spool(tmp_path / "s.sqlite3", max_messages=0, max_bytes=10)
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(ValueError, match="cannot open spool"):
        Spool(tmp_path / "dir.sqlite3", max_messages=10, max_bytes=1000)


def test_send_window_limits_inflight_and_holds_after_reconnect() -> None:
    window = SendWindow(size=3)
    assert window.wanted() == 0  # not connected
    window.on_connect()
    assert window.wanted() == 3
    for mid, seq in ((11, 1), (12, 2), (13, 3)):
        window.sent(mid, seq)
    assert window.wanted() == 0 and window.last_sent == 3
    assert window.acked(11) == 1 and window.wanted() == 1
    assert window.acked(99) is None  # not ours (e.g. availability)
    window.on_disconnect()
    window.on_connect()
    assert window.wanted() == 0  # the client re-sends 12 and 13 first; nothing new may overtake them
    window.acked(12)
    assert window.wanted() == 0
    window.acked(13)
    assert window.wanted() == 3


def test_drop_reporter_rate_limits() -> None:
    reporter = DropReporter(interval=10.0)
    assert reporter.due(now=0.0) is None
    reporter.add(["state", "state", "event"])
    assert reporter.due(now=100.0) == {"state": 2, "event": 1}
    reporter.add(["stats"])
    assert reporter.due(now=105.0) is None  # within the interval
    assert reporter.due(now=110.0) == {"stats": 1}
    assert reporter.count(drop_first=True) == 3 and reporter.count(drop_first=False) == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["state", "stats", "event", "segment", "ack"]), st.integers(1, 60)),
                max_size=40))
def test_spool_matches_reference_model(ops: list[tuple[str, int]]) -> None:
    """Random appends and acks against a list model of the drop policy: same survivors, same order."""
    max_messages, max_bytes = 6, 200
    model: list[tuple[int, EncodedMessage]] = []
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "s.sqlite3", max_messages, max_bytes)
        for n, (kind, size) in enumerate(ops):
            if kind == "ack":
                if model:
                    assert spool.ack(model.pop(0)[0])
                continue
            m = msg(kind, n, size)
            dropped = spool.append(m)
            expected: list[str] = []
            if message_size(m) > max_bytes:
                expected.append(kind)
            else:
                model.append((spool.last_seq, m))
                while len(model) > max_messages or sum(message_size(x) for _, x in model) > max_bytes:
                    first = next((i for i, (_, x) in enumerate(model) if x.kind in DROP_FIRST_KINDS), 0)
                    expected.append(model.pop(first)[1].kind)
            assert dropped == expected
            assert [(s.seq, s.message) for s in spool.peek(limit=100)] == model
            assert len(spool) == len(model) <= max_messages and spool.size_bytes <= max_bytes
        spool.close()
