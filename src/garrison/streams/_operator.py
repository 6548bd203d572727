"""The keyed event-time window operator: samples in, window results out, sans-I/O.

Theory of operation
-------------------
State per key is a *timeline* (the key's accepted samples, sorted by :meth:`Sample.sort_key`)
and the key's live windows, which are only views: ``(start, end, last revision emitted)``.
A window's result is computed from its slice of the timeline when it is emitted, with the sample
just before the slice as the Part 13 prior. Results therefore depend on the set of accepted
samples only, never on their arrival order, which is what the brute-force tests check.

Time moves with the watermark (latest event time - ``max_delay``, or :meth:`advance_watermark`).
Each window has two deadlines in the :class:`DueIndex`: **fire** at ``end`` (emit revision 0)
and **purge** at ``end + allowed_lateness`` (emit :class:`WindowClosed`, call ``on_close``, drop
it). Advancing the watermark pops only the deadlines that have come: the cost is the number of
windows due, whatever the number of keys.

An event is accepted while at least one window it belongs to is alive (its purge deadline is
ahead of the watermark); otherwise it is reported as :class:`TooLate` with the reason. An
accepted event for a window that already fired emits a new revision of it at once. Two less
obvious revisions keep results equal to a recomputation from scratch:

* the event becomes the *prior* of the next window of its key (the window holding the next
  sample): that window is revised too, for its time-based aggregates and its Partial bit;
* session windows merge or grow: the emitted windows that no longer exist are retracted
  (:class:`WindowRetracted`) and the merged window is emitted with the next revision.

Timelines are trimmed when a window is purged: a key keeps the samples of its live windows and
the one sample before them (the prior of any window still to come), an idle key one sample.
Sessions also keep their *frontier*, the end of the last closed session: an event before it
would have reopened a closed session and is too late.

Outputs are buffered and returned by :meth:`drain`; a processor feeds a batch, drains, writes
the outputs and a :meth:`snapshot` in one commit, and :meth:`restore` s after a crash.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Final

import msgspec

from garrison.core import InvalidInput, UsageError

from ._aggregates import Aggregation, evaluate
from ._due import DueIndex
from ._outputs import TooLate, WindowClosed, WindowOutput, WindowResult, WindowRetracted
from ._sample import Sample
from ._windows import BoundedOutOfOrderness, Hopping, Session, Tumbling, Window, WindowKind

__all__ = ["OperatorStats", "WindowOperator"]

_NEVER: Final = -(2**62)
_END_OF_TIME: Final = 2**62
_FIRE: Final = 0
_PURGE: Final = 1
_SNAPSHOT_VERSION: Final = 1
_ts = attrgetter("ts")


class OperatorStats(msgspec.Struct):
    """Counters of a :class:`WindowOperator` (they travel in its snapshot)."""

    events: int = 0
    """Samples fed."""
    too_late: int = 0
    """Samples reported as :class:`TooLate`."""
    results: int = 0
    """:class:`WindowResult` s emitted, revisions included."""
    revisions: int = 0
    """Results with a revision above 0."""
    retractions: int = 0
    """:class:`WindowRetracted` emitted."""
    closed: int = 0
    """Windows purged (:class:`WindowClosed`)."""
    touched: int = 0
    """Due-index entries popped as the watermark advanced: the work of closing windows."""


class _Win:
    # A live window of one key: a view on the key's timeline.
    __slots__ = ("dead", "end", "fired", "key", "revision", "start")

    def __init__(
        self, key: str, start: int, end: int, revision: int = -1, fired: bool = False
    ) -> None:
        self.key = key
        self.start = start
        self.end = end
        self.revision = revision  # last revision emitted; -1 = never emitted
        self.fired = fired  # emitted with its current bounds (a grown session is not)
        self.dead = False


class _Key:
    __slots__ = ("frontier", "sessions", "timeline", "windows")

    def __init__(self) -> None:
        self.timeline: list[Sample] = []
        self.windows: dict[int, _Win] = {}  # tumbling / hopping: start -> window
        self.sessions: list[_Win] = []  # session windows, by start
        self.frontier = _NEVER  # sessions: end of the last closed session


class _WinState(msgspec.Struct, array_like=True):
    start: int
    end: int
    revision: int
    fired: bool


class _KeyState(msgspec.Struct, array_like=True):
    key: str
    timeline: list[Sample]
    windows: list[_WinState]
    frontier: int


class _Snapshot(msgspec.Struct):
    version: int
    windows: WindowKind
    aggregation: Aggregation
    watermark_policy: BoundedOutOfOrderness
    allowed_lateness: int
    watermark: int
    max_ts: int
    keys: list[_KeyState]
    stats: OperatorStats


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)
_key_encoder = msgspec.msgpack.Encoder()
_key_decoder = msgspec.msgpack.Decoder(_KeyState)


class WindowOperator:
    """Keyed, quality-aware aggregation over event-time windows, with revisions.

    ``windows`` is :class:`Tumbling`, :class:`Hopping` or :class:`Session`; ``aggregation``
    names the aggregates and the Part 13 configuration; ``watermark`` bounds the out-of-order
    delay; ``allowed_lateness`` (ms) keeps each window, after it fired, for revisions.
    ``on_close`` is called with each :class:`WindowClosed` as its window is dropped.

    Feed with :meth:`feed` / :meth:`feed_many`, take outputs with :meth:`drain`.
    """

    def __init__(
        self,
        windows: WindowKind,
        aggregation: Aggregation | None = None,
        *,
        watermark: BoundedOutOfOrderness | None = None,
        allowed_lateness: int = 0,
        on_close: Callable[[WindowClosed], None] | None = None,
    ) -> None:
        if not isinstance(windows, Tumbling | Hopping | Session):
            raise InvalidInput(f"WindowOperator: windows must be Tumbling, Hopping or Session, "
                               f"not {type(windows).__name__}")  # fmt: skip
        if allowed_lateness < 0:
            raise InvalidInput(f"WindowOperator: allowed_lateness {allowed_lateness} is negative")
        self.windows: Final = windows
        self.aggregation: Final = aggregation if aggregation is not None else Aggregation()
        self.watermark_policy: Final = watermark or BoundedOutOfOrderness()
        self.allowed_lateness: Final = allowed_lateness
        self.on_close = on_close
        self.stats = OperatorStats()
        self._keys: dict[str, _Key] = {}
        self._due: DueIndex[tuple[int, _Win]] = DueIndex()
        self._out: list[WindowOutput] = []
        self._wm = _NEVER
        self._max_ts = _NEVER
        self._delay = self.watermark_policy.max_delay
        self._needs_prior = self.aggregation.time_based

    # -- public face -------------------------------------------------------------------------

    @property
    def watermark(self) -> int:
        """The current watermark (ms); windows ending at or before it have fired."""
        return self._wm

    @property
    def keys(self) -> int:
        """How many keys the operator holds state for."""
        return len(self._keys)

    @property
    def live_windows(self) -> int:
        """How many windows are alive (fired or not, not yet purged)."""
        return sum(len(k.windows) + len(k.sessions) for k in self._keys.values())

    def feed(self, key: str, sample: Sample) -> None:
        """Accept one sample for ``key`` (outputs accumulate until :meth:`drain`)."""
        self.stats.events += 1
        w = self.windows
        if isinstance(w, Tumbling):
            self._feed_tumbling(key, sample, w.size)
        elif isinstance(w, Hopping):
            self._feed_hopping(key, sample, w)
        else:
            self._feed_session(key, sample, w.gap)
        ts = sample.ts
        if ts > self._max_ts:
            self._max_ts = ts
            wm = ts - self._delay
            if wm > self._wm:
                self._advance(wm)

    def feed_many(self, events: Iterable[tuple[str, Sample]]) -> None:
        """Accept ``(key, sample)`` pairs in order."""
        feed = self.feed
        for key, sample in events:
            feed(key, sample)

    def advance_watermark(self, watermark: int) -> None:
        """Move the watermark to ``watermark`` if that is ahead (e.g. from a partition's idle
        timer, or the minimum over upstream partitions): windows due fire and close."""
        if watermark > self._wm:
            self._advance(watermark)

    def flush(self) -> None:
        """End of input: emit every window not yet fired (marked Partial: its end was not
        reached) and close all. Events fed afterwards are too late."""
        self._advance(_END_OF_TIME, early=True)

    def drain(self) -> list[WindowOutput]:
        """The outputs produced since the last drain, in order."""
        out, self._out = self._out, []
        return out

    # -- feeding -----------------------------------------------------------------------------

    def _key(self, key: str) -> _Key:
        ks = self._keys.get(key)
        if ks is None:
            ks = self._keys[key] = _Key()
        return ks

    def _too_late(self, key: str, sample: Sample, reason: str) -> None:
        self.stats.too_late += 1
        self._out.append(TooLate(key, sample, reason, self._wm))

    def _insert(self, ks: _Key, sample: Sample) -> int:
        # Keep the timeline sorted; in-order samples (the common case) are appended.
        tl = ks.timeline
        if not tl or tl[-1].ts < sample.ts:
            tl.append(sample)
            return len(tl) - 1
        i = bisect.bisect_right(tl, sample.sort_key(), key=Sample.sort_key)
        tl.insert(i, sample)
        return i

    def _feed_tumbling(self, key: str, sample: Sample, size: int) -> None:
        # The hot path: an in-order sample for a window that exists costs two dict lookups and
        # an append.
        ts = sample.ts
        start = ts - ts % size
        end = start + size
        if end + self.allowed_lateness <= self._wm:
            self._too_late(key, sample, self._closed_reason(start, end))
            return
        ks = self._keys.get(key)
        if ks is None:
            ks = self._keys[key] = _Key()
        tl = ks.timeline
        if not tl or tl[-1].ts < ts:
            tl.append(sample)
            in_order = True
        else:
            i = self._insert(ks, sample)
            in_order = False
        win = ks.windows.get(start)
        if win is None:
            win = ks.windows[start] = _Win(key, start, end)
            self._schedule(win)
        elif win.fired:
            self._emit(ks, win)
        if not in_order:
            self._revise_next(ks, i, ts)

    def _feed_hopping(self, key: str, sample: Sample, w: Hopping) -> None:
        ts = sample.ts
        lateness = self.allowed_lateness
        wm = self._wm
        starts = [s for s in w.starts(ts) if s + w.size + lateness > wm]
        if not starts:
            last = w.starts(ts)[0]
            self._too_late(key, sample, self._closed_reason(last, last + w.size))
            return
        ks = self._key(key)
        i = self._insert(ks, sample)
        for start in reversed(starts):
            win = ks.windows.get(start)
            if win is None:
                win = ks.windows[start] = _Win(key, start, start + w.size)
                self._schedule(win)
            elif win.fired:
                self._emit(ks, win)
        self._revise_next(ks, i, ts)

    def _feed_session(self, key: str, sample: Sample, gap: int) -> None:
        ts = sample.ts
        ks = self._keys.get(key)
        if ks is not None and ts < ks.frontier:
            self._too_late(
                key,
                sample,
                f"session of key {key!r} ending at {ks.frontier} is closed (watermark "
                f"{self._wm}, allowed lateness {self.allowed_lateness} ms)",
            )
            return
        end = ts + gap
        overlapping = [] if ks is None else [s for s in ks.sessions if s.start < end and ts < s.end]
        if not overlapping and end + self.allowed_lateness <= self._wm:
            self._too_late(key, sample, self._closed_reason(ts, end, session=True))
            return
        ks = self._key(key)
        i = self._insert(ks, sample)
        if not overlapping:
            win = _Win(key, ts, end)
            bisect.insort(ks.sessions, win, key=attrgetter("start"))
            self._schedule(win)
        else:
            self._merge_sessions(ks, key, overlapping, ts, end)
        self._revise_next(ks, i, ts)

    def _merge_sessions(self, ks: _Key, key: str, found: list[_Win], ts: int, end: int) -> None:
        keep = found[0]
        start = min(ts, keep.start)
        end = max(end, max(s.end for s in found))
        revision = max(s.revision for s in found)
        for s in found:
            moved = s is not keep or (s.start, s.end) != (start, end)
            if s.fired and moved:
                self.stats.retractions += 1
                self._out.append(WindowRetracted(key, Window(s.start, s.end), s.revision))
            if s is not keep:
                s.dead = True
                ks.sessions.remove(s)
        changed = (keep.start, keep.end) != (start, end)
        keep.start, keep.end, keep.revision = start, end, revision
        if changed:
            keep.fired = False
            self._schedule(keep)  # older due entries for it are now stale and skipped
        elif keep.fired:
            self._emit(ks, keep)

    def _schedule(self, win: _Win) -> None:
        # A new (or re-shaped) window: fire now if its end has passed, else at its end; purge
        # after the allowed lateness.
        if win.end <= self._wm:
            self._emit(self._keys[win.key], win)
        else:
            self._due.add(win.end, (_FIRE, win))
        self._due.add(win.end + self.allowed_lateness, (_PURGE, win))

    def _revise_next(self, ks: _Key, i: int, ts: int) -> None:
        # The sample just inserted at timeline[i] is now the prior of the window holding the
        # next sample (when that window starts after it): revise that window if it fired. With
        # value-based aggregates only the prior matters through the Partial bit, i.e. only when
        # the new sample is the key's first.
        tl = ks.timeline
        if i + 1 >= len(tl) or (i > 0 and not self._needs_prior):
            return
        nxt = tl[i + 1].ts
        if nxt <= ts:
            return
        for win in self._windows_at(ks, nxt):
            if win.start > ts and win.fired:
                self._emit(ks, win)

    def _windows_at(self, ks: _Key, ts: int) -> list[_Win]:
        w = self.windows
        if isinstance(w, Tumbling):
            win = ks.windows.get(ts - ts % w.size)
            return [] if win is None else [win]
        if isinstance(w, Hopping):
            return [win for s in w.starts(ts) if (win := ks.windows.get(s)) is not None]
        return [s for s in ks.sessions if s.start <= ts < s.end]

    def _closed_reason(self, start: int, end: int, *, session: bool = False) -> str:
        what = "a new session" if session else "window"
        return (
            f"{what} [{start}, {end}) closed at {end + self.allowed_lateness} (end + allowed "
            f"lateness {self.allowed_lateness} ms); watermark is {self._wm}"
        )

    # -- time --------------------------------------------------------------------------------

    def _advance(self, wm: int, *, early: bool = False) -> None:
        self._wm = wm
        lateness = self.allowed_lateness
        stats = self.stats
        for deadline, items in self._due.pop_due(wm):
            if len(items) > 1:  # same output order whatever order the windows were created in
                items.sort(key=_entry_order)
            for kind, win in items:
                stats.touched += 1
                if win.dead:
                    continue
                if kind == _FIRE:
                    if win.end == deadline and not win.fired:
                        self._emit(self._keys[win.key], win, early=early)
                elif win.end + lateness == deadline:
                    self._purge(win)

    def _emit(self, ks: _Key, win: _Win, *, early: bool = False) -> None:
        tl = ks.timeline
        lo = bisect.bisect_left(tl, win.start, key=_ts)
        hi = bisect.bisect_left(tl, win.end, lo, key=_ts)
        samples = tl[lo:hi]
        prior = tl[lo - 1] if lo else None
        values, status = evaluate(self.aggregation, samples, win.start, win.end, prior, early)
        win.revision += 1
        win.fired = True
        self.stats.results += 1
        if win.revision:
            self.stats.revisions += 1
        window = Window(win.start, win.end)
        self._out.append(WindowResult(win.key, window, win.revision, status, values, len(samples)))

    def _purge(self, win: _Win) -> None:
        win.dead = True
        ks = self._keys[win.key]
        if isinstance(self.windows, Session):
            ks.sessions.remove(win)
            ks.frontier = max(ks.frontier, win.end)
            live = [s.start for s in ks.sessions]
        else:
            del ks.windows[win.start]
            live = list(ks.windows)
        self._trim(ks, min(live) if live else None)
        self.stats.closed += 1
        closed = WindowClosed(win.key, Window(win.start, win.end), win.revision)
        self._out.append(closed)
        if self.on_close is not None:
            self.on_close(closed)

    @staticmethod
    def _trim(ks: _Key, first_live_start: int | None) -> None:
        tl = ks.timeline
        if first_live_start is None:
            del tl[:-1]  # the prior of whatever window comes next
            return
        i = bisect.bisect_left(tl, first_live_start, key=_ts)
        if i > 1:
            del tl[: i - 1]

    # -- crash recovery ----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes (msgpack), to store with the input offset it reflects.

        Call it after :meth:`drain`: outputs not yet drained are not part of a snapshot.
        """
        if self._out:
            raise UsageError("WindowOperator.snapshot: drain() the pending outputs first")
        keys = []
        for key in sorted(self._keys):
            ks = self._keys[key]
            wins = ks.sessions if isinstance(self.windows, Session) else ks.windows.values()
            states = [_WinState(w.start, w.end, w.revision, w.fired) for w in wins]
            keys.append(_KeyState(key, list(ks.timeline), states, ks.frontier))
        snap = _Snapshot(
            _SNAPSHOT_VERSION,
            self.windows,
            self.aggregation,
            self.watermark_policy,
            self.allowed_lateness,
            self._wm,
            self._max_ts,
            keys,
            self.stats,
        )
        return _snapshot_encoder.encode(snap)

    def restore(self, data: bytes) -> None:
        """Replace this operator's state with a :meth:`snapshot` taken by an operator with the
        same configuration (anything else is refused with :class:`InvalidInput`)."""
        try:
            snap = _snapshot_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidInput(f"WindowOperator.restore: not a window snapshot: {exc}") from None
        if snap.version != _SNAPSHOT_VERSION:
            raise InvalidInput(f"WindowOperator.restore: snapshot version {snap.version} is not "
                               f"{_SNAPSHOT_VERSION}")  # fmt: skip
        mine = (self.windows, self.aggregation, self.watermark_policy, self.allowed_lateness)
        theirs = (snap.windows, snap.aggregation, snap.watermark_policy, snap.allowed_lateness)
        if mine != theirs:
            raise InvalidInput(
                f"WindowOperator.restore: the snapshot was taken with {theirs!r}, "
                f"this operator is configured with {mine!r}"
            )
        self._keys.clear()
        self._due.clear()
        self._out.clear()
        self._wm = snap.watermark
        self._max_ts = snap.max_ts
        self.stats = snap.stats
        session = isinstance(self.windows, Session)
        for state in snap.keys:
            ks = self._keys[state.key] = _Key()
            ks.timeline = state.timeline
            ks.frontier = state.frontier
            for w in state.windows:
                win = _Win(state.key, w.start, w.end, w.revision, w.fired)
                if session:
                    ks.sessions.append(win)
                else:
                    ks.windows[w.start] = win
                if not win.fired:
                    self._due.add(win.end, (_FIRE, win))
                self._due.add(win.end + self.allowed_lateness, (_PURGE, win))

    # -- incremental checkpoints (a processor stores only the keys a batch changed) ------------

    def snapshot_key(self, key: str) -> bytes | None:
        """One key's state as bytes, or None when the key holds no state any more.

        With :meth:`snapshot_meta`, a checkpoint of the keys that changed: every change of a
        key's state comes from a sample fed for it or an output drained for it (a window fired,
        revised, retracted or closed), so those keys are the ones to store after a batch.
        """
        ks = self._keys.get(key)
        if ks is None:
            return None
        wins = ks.sessions if isinstance(self.windows, Session) else ks.windows.values()
        states = [_WinState(w.start, w.end, w.revision, w.fired) for w in wins]
        return _key_encoder.encode(_KeyState(key, list(ks.timeline), states, ks.frontier))

    def snapshot_meta(self) -> bytes:
        """Everything but the keys: configuration, watermark, counters (see :meth:`snapshot`)."""
        if self._out:
            raise UsageError("WindowOperator.snapshot_meta: drain() the pending outputs first")
        snap = _Snapshot(
            _SNAPSHOT_VERSION,
            self.windows,
            self.aggregation,
            self.watermark_policy,
            self.allowed_lateness,
            self._wm,
            self._max_ts,
            [],
            self.stats,
        )
        return _snapshot_encoder.encode(snap)

    def restore_parts(self, meta: bytes, keys: Iterable[bytes]) -> None:
        """:meth:`restore` from a :meth:`snapshot_meta` and the :meth:`snapshot_key` of every
        key that holds state."""
        try:
            snap = _snapshot_decoder.decode(meta)
            states = [_key_decoder.decode(k) for k in keys]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidInput(f"WindowOperator.restore_parts: not a checkpoint: {exc}") from None
        snap.keys = sorted(states, key=attrgetter("key"))
        self.restore(_snapshot_encoder.encode(snap))


def _entry_order(entry: tuple[int, _Win]) -> tuple[int, str, int]:
    return entry[0], entry[1].key, entry[1].start
