"""The errors of the streams log, placed in garrison's one exception tree.

GarrisonError
├── UsageError
│   ├── ConfigError             a bad log URL, option or ``[streams]`` value (garrison.core)
│   ├── InvalidInput            a bad topic/group/member name, partition, offset or size
│   │   └── RecordTooLarge      a record exceeds ``MAX_RECORD_BYTES``
│   └── TopicExists             create_topic(exist_ok=False) on an existing topic
├── RemoteError
│   ├── Fenced                  a commit carried a stale generation, or a partition the member
│   │   │                       no longer owns: nothing of it was applied
│   │   └── NotAMember          the member left or its lease expired: it must join again
│   └── LogClosed               the log was closed (or its connection is gone for good)
└── NotFound
    ├── TopicNotFound           no topic has this name
    └── GroupNotFound           no consumer group has this name
"""

from __future__ import annotations

from garrison.core import InvalidInput, NotFound, RemoteError, UsageError

__all__ = [
    "Fenced",
    "GroupNotFound",
    "LogClosed",
    "NotAMember",
    "RecordTooLarge",
    "TopicExists",
    "TopicNotFound",
]


class RecordTooLarge(InvalidInput):
    """A record (key + value + headers) is larger than the log accepts."""


class TopicExists(UsageError):
    """A topic of this name exists already."""


class TopicNotFound(NotFound):
    """No topic has this name."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"no topic named {topic!r}")


class GroupNotFound(NotFound):
    """No consumer group has this name."""

    def __init__(self, group: str) -> None:
        self.group = group
        super().__init__(f"no consumer group named {group!r}")


class Fenced(RemoteError):
    """A write of a group member was rejected: the group moved to a newer generation, or the
    partition is no longer assigned to the member. Nothing of the write was applied; the member
    must heartbeat to learn its current assignment and re-read from the committed offsets."""


class NotAMember(Fenced):
    """The member is not in the group (it left, or its lease expired and it was removed)."""


class LogClosed(RemoteError):
    """The log is closed; no operation can run on it."""
