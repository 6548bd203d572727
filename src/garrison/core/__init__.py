"""garrison's kernel: configuration, errors, clock, ids, deadlines, serialization and logging.

The lowest layer: it imports nothing else from garrison.
"""

from ._clock import Clock, FakeClock, SystemClock
from ._config import (
    AppConfig,
    ClientConfig,
    DevConfig,
    GarrisonConfig,
    LogConfig,
    ServiceConfig,
    convert_section,
    load_config,
    parse_config,
)
from ._deadline import (
    DEADLINE_HEADER,
    Deadline,
    current_deadline,
    deadline_scope,
    pop_deadline,
    push_deadline,
    remaining,
)
from ._errors import (
    ConfigError,
    DeadlineExceeded,
    GarrisonError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RemoteError,
    RemoteProtocolError,
    RemoteStatusError,
    ServiceUnavailable,
    TransportError,
    Unauthenticated,
    UsageError,
)
from ._ids import new_id, new_uuid7, uuid7_time
from ._logging import JsonFormatter, configure_logging, get_logger
from ._serde import from_builtins, json_decode, json_encode, msgpack_decode, msgpack_encode
from ._sqlite_writer import CommitStats, GroupCommitWriter, WriterStats
from ._timeouts import TimeoutWheel, default_wheel

__all__ = [
    "AppConfig",
    "ClientConfig",
    "Clock",
    "CommitStats",
    "ConfigError",
    "DEADLINE_HEADER",
    "Deadline",
    "DeadlineExceeded",
    "DevConfig",
    "FakeClock",
    "GarrisonConfig",
    "GarrisonError",
    "GroupCommitWriter",
    "InvalidInput",
    "JsonFormatter",
    "LogConfig",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "RemoteProtocolError",
    "RemoteStatusError",
    "ServiceConfig",
    "ServiceUnavailable",
    "SystemClock",
    "TimeoutWheel",
    "TransportError",
    "Unauthenticated",
    "UsageError",
    "WriterStats",
    "configure_logging",
    "convert_section",
    "current_deadline",
    "deadline_scope",
    "default_wheel",
    "from_builtins",
    "get_logger",
    "json_decode",
    "json_encode",
    "load_config",
    "msgpack_decode",
    "msgpack_encode",
    "new_id",
    "new_uuid7",
    "parse_config",
    "pop_deadline",
    "push_deadline",
    "remaining",
    "uuid7_time",
]
