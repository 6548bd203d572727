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
    load_config,
    parse_config,
)
from ._deadline import DEADLINE_HEADER, Deadline, current_deadline, deadline_scope, remaining
from ._errors import (
    ConfigError,
    DeadlineExceeded,
    GarrisonError,
    InvalidInput,
    NotFound,
    RemoteError,
    RemoteProtocolError,
    RemoteStatusError,
    ServiceUnavailable,
    TransportError,
    UsageError,
)
from ._ids import new_id, new_uuid7, uuid7_time
from ._logging import JsonFormatter, configure_logging, get_logger
from ._serde import from_builtins, json_decode, json_encode, msgpack_decode, msgpack_encode

__all__ = [
    "AppConfig",
    "ClientConfig",
    "Clock",
    "ConfigError",
    "DEADLINE_HEADER",
    "Deadline",
    "DeadlineExceeded",
    "DevConfig",
    "FakeClock",
    "GarrisonConfig",
    "GarrisonError",
    "InvalidInput",
    "JsonFormatter",
    "LogConfig",
    "NotFound",
    "RemoteError",
    "RemoteProtocolError",
    "RemoteStatusError",
    "ServiceConfig",
    "ServiceUnavailable",
    "SystemClock",
    "TransportError",
    "UsageError",
    "configure_logging",
    "current_deadline",
    "deadline_scope",
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
    "remaining",
    "uuid7_time",
]
