"""The gRPC layer's conversions that are written by hand for speed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from authz_service.api.convert import ts


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 22, 9, 30, 0, 123456, tzinfo=UTC),
        datetime(2026, 11, 22, 9, 30, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 11, 22, 9, 30, 0, 999999, tzinfo=timezone(timedelta(hours=-8))),
        datetime(2026, 1, 1, 0, 0, 0, 5),  # naive: UTC
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch: nanos stay positive
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_ts_agrees_with_protobufs_own_conversion(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert ts(value) == expected


def test_ts_of_none_is_none() -> None:
    assert ts(None) is None
