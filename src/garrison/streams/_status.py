"""OPC UA status codes: the 32-bit quality word every :class:`~garrison.streams.Sample` carries.

Theory of operation
-------------------
A status code is a plain ``int`` laid out as OPC UA defines it (OPC 10000-4, Part 4 §7.39
"StatusCode", 1.05; §7.34 in 1.04), so a value read from an OPC UA server, a historian or a PLC
gateway keeps its quality bit for bit::

    bit 31-30  severity        00 Good, 01 Uncertain, 10 Bad (11 reserved, read as Bad)
    bit 29-28  reserved
    bit 27-16  sub-code        which one (Bad_SensorFailure, Uncertain_LastUsableValue ...)
    bit 15     StructureChanged
    bit 14     SemanticsChanged
    bit 13-12  reserved
    bit 11-10  InfoType        01 = the info bits below describe a DataValue
    bit  9-8   Limit           00 none, 01 Low, 10 High, 11 Constant
    bit  7     Overflow
    bit  6-5   reserved
    bit  4     MultipleValues  (historian bits, Part 11 §6.3 / Part 13 §5.3)
    bit  3     ExtraData
    bit  2     Partial
    bit  1-0   value type      00 Raw, 01 Calculated, 10 Interpolated

Codes stay plain ints (msgspec encodes them natively and the hot path compares ints); this
module gives them names, readable descriptions and the bit operations. The sub-code values are
those of the OPC Foundation's ``StatusCode.csv`` (UA-Nodeset), e.g. Bad_SensorFailure
0x808C0000, Uncertain_LastUsableValue 0x40900000, Good_LocalOverride 0x00960000.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = ["Limit", "Severity", "StatusCode"]

_SEVERITY_SHIFT: Final = 30
_SUBCODE_MASK: Final = 0x0FFF0000
_CODE_MASK: Final = 0xFFFF0000  # severity + reserved + sub-code: "which status"
_INFO_TYPE_DATAVALUE: Final = 0x00000400
_LIMIT_SHIFT: Final = 8
_LIMIT_MASK: Final = 0x00000300
_OVERFLOW: Final = 0x00000080
_VALUE_TYPE_MASK: Final = 0x00000003
_HISTORIAN_MASK: Final = 0x0000001F


class Severity(IntEnum):
    """The top two bits of a status code (Part 4 §7.39)."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


class Limit(IntEnum):
    """The limit bits (Part 4 §7.39, bits 8-9): whether the value sits at a limit of its source."""

    NONE = 0
    LOW = 1
    HIGH = 2
    CONSTANT = 3


# name -> code, in the spelling of the OPC UA specification (Severity_Name). The selection is
# what field data and aggregates use; any other code still works as a plain int.
_NAMED: Final[dict[str, int]] = {
    "Good": 0x00000000,
    "Good_LocalOverride": 0x00960000,
    "Good_Clamped": 0x00300000,
    "Good_SubNormal": 0x00EB0000,
    "Good_Edited": 0x00DC0000,
    "Good_NoData": 0x00A50000,
    "Good_Overload": 0x002F0000,
    "Uncertain": 0x40000000,
    "Uncertain_NoCommunicationLastUsableValue": 0x408F0000,
    "Uncertain_LastUsableValue": 0x40900000,
    "Uncertain_SubstituteValue": 0x40910000,
    "Uncertain_InitialValue": 0x40920000,
    "Uncertain_SensorNotAccurate": 0x40930000,
    "Uncertain_EngineeringUnitsExceeded": 0x40940000,
    "Uncertain_SubNormal": 0x40950000,
    "Uncertain_DataSubNormal": 0x40A40000,
    "Uncertain_SimulatedValue": 0x42090000,
    "Uncertain_SensorCalibration": 0x420A0000,
    "Uncertain_TransducerInManual": 0x42080000,
    "Uncertain_ConfigurationError": 0x420F0000,
    "Bad": 0x80000000,
    "Bad_ConfigurationError": 0x80890000,
    "Bad_NotConnected": 0x808A0000,
    "Bad_DeviceFailure": 0x808B0000,
    "Bad_SensorFailure": 0x808C0000,
    "Bad_OutOfService": 0x808D0000,
    "Bad_NoCommunication": 0x80310000,
    "Bad_WaitingForInitialData": 0x80320000,
    "Bad_OutOfRange": 0x803C0000,
    "Bad_TypeMismatch": 0x80740000,
    "Bad_NoData": 0x809B0000,
    "Bad_DataLost": 0x809D0000,
    "Bad_DataUnavailable": 0x809E0000,
    "Bad_BoundNotFound": 0x80D70000,
    "Bad_AggregateInvalidInputs": 0x80D60000,
    "Bad_AggregateNotSupported": 0x80D50000,
    "Bad_AggregateConfigurationRejected": 0x80DA0000,
}
_NAMES: Final[dict[int, str]] = {code: name for name, code in _NAMED.items()}


class StatusCode:
    """Names and bit operations for OPC UA status codes (plain ``int`` values).

    Constants name the codes (``StatusCode.BAD_SENSOR_FAILURE``) and the historian bits
    (``StatusCode.CALCULATED``, ``StatusCode.PARTIAL``); the static methods read and set the
    fields. Nothing is instantiated: a status is just its 32-bit integer.
    """

    __slots__ = ()

    GOOD: Final = 0x00000000
    GOOD_LOCAL_OVERRIDE: Final = 0x00960000
    GOOD_CLAMPED: Final = 0x00300000
    GOOD_SUB_NORMAL: Final = 0x00EB0000
    GOOD_EDITED: Final = 0x00DC0000
    GOOD_NO_DATA: Final = 0x00A50000
    UNCERTAIN: Final = 0x40000000
    UNCERTAIN_NO_COMMUNICATION_LAST_USABLE_VALUE: Final = 0x408F0000
    UNCERTAIN_LAST_USABLE_VALUE: Final = 0x40900000
    UNCERTAIN_SUBSTITUTE_VALUE: Final = 0x40910000
    UNCERTAIN_INITIAL_VALUE: Final = 0x40920000
    UNCERTAIN_SENSOR_NOT_ACCURATE: Final = 0x40930000
    UNCERTAIN_ENGINEERING_UNITS_EXCEEDED: Final = 0x40940000
    UNCERTAIN_SUB_NORMAL: Final = 0x40950000
    UNCERTAIN_DATA_SUB_NORMAL: Final = 0x40A40000
    UNCERTAIN_SIMULATED_VALUE: Final = 0x42090000
    UNCERTAIN_SENSOR_CALIBRATION: Final = 0x420A0000
    BAD: Final = 0x80000000
    BAD_CONFIGURATION_ERROR: Final = 0x80890000
    BAD_NOT_CONNECTED: Final = 0x808A0000
    BAD_DEVICE_FAILURE: Final = 0x808B0000
    BAD_SENSOR_FAILURE: Final = 0x808C0000
    BAD_OUT_OF_SERVICE: Final = 0x808D0000
    BAD_NO_COMMUNICATION: Final = 0x80310000
    BAD_WAITING_FOR_INITIAL_DATA: Final = 0x80320000
    BAD_OUT_OF_RANGE: Final = 0x803C0000
    BAD_NO_DATA: Final = 0x809B0000
    BAD_DATA_LOST: Final = 0x809D0000
    BAD_AGGREGATE_INVALID_INPUTS: Final = 0x80D60000

    # Historian bits (Part 11 §6.3 "Extra data and bounds", Part 13 §5.3): meaningful with the
    # DataValue info type, which the setters below switch on.
    RAW: Final = 0x0
    CALCULATED: Final = 0x1
    INTERPOLATED: Final = 0x2
    PARTIAL: Final = 0x4
    EXTRA_DATA: Final = 0x8
    MULTIPLE_VALUES: Final = 0x10
    OVERFLOW: Final = _OVERFLOW
    STRUCTURE_CHANGED: Final = 0x8000
    SEMANTICS_CHANGED: Final = 0x4000

    @staticmethod
    def severity(code: int) -> Severity:
        """Good, Uncertain or Bad (the reserved severity 11 reads as Bad, as Part 4 says)."""
        sev = (code >> _SEVERITY_SHIFT) & 0b11
        return Severity.BAD if sev >= 2 else Severity(sev)

    @staticmethod
    def is_good(code: int) -> bool:
        """Severity Good."""
        return (code >> _SEVERITY_SHIFT) & 0b11 == 0

    @staticmethod
    def is_uncertain(code: int) -> bool:
        """Severity Uncertain."""
        return (code >> _SEVERITY_SHIFT) & 0b11 == 1

    @staticmethod
    def is_bad(code: int) -> bool:
        """Severity Bad (or the reserved severity)."""
        return (code >> _SEVERITY_SHIFT) & 0b11 >= 2

    @staticmethod
    def code_bits(code: int) -> int:
        """Severity and sub-code only: which status this is, without the info bits."""
        return code & _CODE_MASK

    @staticmethod
    def sub_code(code: int) -> int:
        """The 12-bit sub-code (bits 16-27)."""
        return (code & _SUBCODE_MASK) >> 16

    @staticmethod
    def limit(code: int) -> Limit:
        """The limit bits (Low, High, Constant) of a DataValue status."""
        return Limit((code & _LIMIT_MASK) >> _LIMIT_SHIFT)

    @staticmethod
    def with_limit(code: int, limit: Limit) -> int:
        """``code`` with its limit bits set to ``limit`` (and the DataValue info type)."""
        return (code & ~_LIMIT_MASK) | (int(limit) << _LIMIT_SHIFT) | _INFO_TYPE_DATAVALUE

    @staticmethod
    def historian_bits(code: int) -> int:
        """The historian bits: value type (Raw/Calculated/Interpolated) | Partial | ExtraData |
        MultipleValues."""
        return code & _HISTORIAN_MASK

    @staticmethod
    def with_historian_bits(code: int, bits: int) -> int:
        """``code`` with its historian bits replaced by ``bits`` (and the DataValue info type)."""
        return (code & ~_HISTORIAN_MASK) | (bits & _HISTORIAN_MASK) | _INFO_TYPE_DATAVALUE

    @staticmethod
    def value_type(code: int) -> int:
        """RAW, CALCULATED or INTERPOLATED."""
        return code & _VALUE_TYPE_MASK

    @staticmethod
    def is_partial(code: int) -> bool:
        """Whether the Partial historian bit is set: the value covers an incomplete interval."""
        return bool(code & StatusCode.PARTIAL)

    @staticmethod
    def from_name(name: str) -> int:
        """The code named ``name`` in the specification's spelling (``"Bad_SensorFailure"``)."""
        try:
            return _NAMED[name]
        except KeyError:
            raise ValueError(f"unknown OPC UA status code name {name!r}") from None

    @staticmethod
    def name(code: int) -> str:
        """The specification's name of ``code``'s severity and sub-code, e.g.
        ``"Uncertain_LastUsableValue"``; an unnamed sub-code reads ``"Bad_0x80AB0000"``."""
        bits = code & _CODE_MASK
        known = _NAMES.get(bits)
        if known is not None:
            return known
        return f"{StatusCode.severity(code).name.title()}_0x{bits:08X}"

    @staticmethod
    def describe(code: int) -> str:
        """A readable form: the name, then the flags, e.g. ``"Good, Calculated, Partial"``."""
        parts = [StatusCode.name(code)]
        if code & StatusCode.STRUCTURE_CHANGED:
            parts.append("StructureChanged")
        if code & StatusCode.SEMANTICS_CHANGED:
            parts.append("SemanticsChanged")
        limit = StatusCode.limit(code)
        if limit is not Limit.NONE:
            parts.append(f"Limit{limit.name.title()}")
        if code & _OVERFLOW:
            parts.append("Overflow")
        vtype = code & _VALUE_TYPE_MASK
        if vtype == StatusCode.CALCULATED:
            parts.append("Calculated")
        elif vtype == StatusCode.INTERPOLATED:
            parts.append("Interpolated")
        if code & StatusCode.PARTIAL:
            parts.append("Partial")
        if code & StatusCode.EXTRA_DATA:
            parts.append("ExtraData")
        if code & StatusCode.MULTIPLE_VALUES:
            parts.append("MultipleValues")
        return ", ".join(parts)
