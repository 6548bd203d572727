"""OPC UA status codes: the bit layout of Part 4 §7.39 and the names of StatusCode.csv."""

from __future__ import annotations

import pytest

from garrison.streams import Limit, Provenance, Sample, Severity, StatusCode


@pytest.mark.parametrize(
    ("name", "code", "severity"),
    [
        ("Good", 0x00000000, Severity.GOOD),
        ("Good_LocalOverride", 0x00960000, Severity.GOOD),
        ("Uncertain_LastUsableValue", 0x40900000, Severity.UNCERTAIN),
        ("Uncertain_DataSubNormal", 0x40A40000, Severity.UNCERTAIN),
        ("Bad_SensorFailure", 0x808C0000, Severity.BAD),
        ("Bad_NoData", 0x809B0000, Severity.BAD),
    ],
)
def test_named_codes_match_the_specification(name: str, code: int, severity: Severity) -> None:
    assert StatusCode.from_name(name) == code
    assert StatusCode.name(code) == name
    assert StatusCode.severity(code) is severity


def test_the_reserved_severity_reads_as_bad() -> None:
    assert StatusCode.severity(0xC0000000) is Severity.BAD
    assert StatusCode.is_bad(0xC0000000)


def test_limit_and_historian_bits_sit_where_part_4_puts_them() -> None:
    code = StatusCode.with_limit(StatusCode.UNCERTAIN_SENSOR_NOT_ACCURATE, Limit.HIGH)
    assert code == 0x40930000 | 0x400 | 0x200
    assert StatusCode.limit(code) is Limit.HIGH
    code = StatusCode.with_historian_bits(code, StatusCode.INTERPOLATED | StatusCode.PARTIAL)
    assert StatusCode.value_type(code) == StatusCode.INTERPOLATED
    assert StatusCode.is_partial(code)
    assert StatusCode.code_bits(code) == StatusCode.UNCERTAIN_SENSOR_NOT_ACCURATE
    assert StatusCode.sub_code(code) == 0x093
    assert StatusCode.describe(code) == (
        "Uncertain_SensorNotAccurate, LimitHigh, Interpolated, Partial"
    )
    assert StatusCode.describe(StatusCode.GOOD | StatusCode.CALCULATED | StatusCode.EXTRA_DATA
                               | StatusCode.MULTIPLE_VALUES | StatusCode.OVERFLOW) == (
        "Good, Overflow, Calculated, ExtraData, MultipleValues"
    )  # fmt: skip


def test_unknown_codes_still_have_a_readable_name() -> None:
    assert StatusCode.name(0x80AB0000) == "Bad_0x80AB0000"
    with pytest.raises(ValueError, match="unknown OPC UA status code name"):
        StatusCode.from_name("Bad_Nonsense")


def test_a_sample_is_compact_and_knows_its_quality() -> None:
    s = Sample(1_700_000_000_000, 3.5, StatusCode.UNCERTAIN_SUBSTITUTE_VALUE, 0.2,
               Provenance.SUBSTITUTED | Provenance.ANNOTATED)  # fmt: skip
    assert (s.is_good, s.is_uncertain, s.is_bad) == (False, True, False)
    import msgspec

    assert msgspec.json.encode(s) == b"[1700000000000,3.5,1083244544,0.2,5]"
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(s), type=Sample) == s
