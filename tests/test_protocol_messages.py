"""Wire messages: canonical round-trips, and every malformed encoding is rejected."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import MessageError, SecAggValueError
from secagg.messages import (
    MAGIC,
    WIRE_VERSION,
    Abort,
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    Message,
    RevealedShare,
    Roster,
    RosterEntry,
    RoundConfig,
    ShareDelivery,
    ShareKeys,
    SharePayload,
    UnmaskRequest,
    UnmaskShares,
    decode_message,
    encode_message,
)

RID = bytes(range(16))
K1, K2 = b"\x01" * 32, b"\x02" * 32


def samples() -> list[Message]:
    return [
        RoundConfig(RID, 10, 1000, 20, 4, 3, 1, 1, 3, 3, True),
        AdvertiseKeys(RID, 3, K1, K2),
        Roster(RID, (RosterEntry(1, K1, K2), RosterEntry(7, K2, K1))),
        ShareKeys(RID, 2, (EncryptedShare(1, b"abc"), EncryptedShare(5, b"de"))),
        ShareDelivery(RID, 2, (EncryptedShare(4, b"xyz"),)),
        SharePayload(RID, 2, 3, b"k" * 43, b"s" * 43),
        MaskedInput(RID, 9, b"\x00\xff" * 10),
        UnmaskRequest(RID, 1, (2, 3), (4,)),
        UnmaskShares(RID, 1, (RevealedShare(2, b"a"), RevealedShare(3, b"b")), (RevealedShare(4, b"c"),)),
        Abort(RID, "too few survivors ✓"),
    ]


@pytest.mark.parametrize("msg", samples(), ids=lambda m: type(m).__name__)
def test_round_trip_is_canonical(msg: Message) -> None:
    data = encode_message(msg)
    assert data[:4] == MAGIC and data[4] == WIRE_VERSION and data[5] == msg.TYPE
    back = decode_message(data)
    assert type(back) is type(msg)
    assert back == msg
    assert back.encode() == data
    assert dataclasses.replace(back).encode() == data  # re-encoded from the fields, not the cache
    # every proper prefix and any trailing byte is rejected
    for cut in range(len(data)):
        with pytest.raises(MessageError):
            decode_message(data[:cut])
    with pytest.raises(MessageError):
        decode_message(data + b"\x00")


@pytest.mark.parametrize("msg", samples(), ids=lambda m: type(m).__name__)
def test_header_checks(msg: Message) -> None:
    data = bytearray(msg.encode())
    bad_magic = b"XXXX" + bytes(data[4:])
    with pytest.raises(MessageError, match="magic"):
        decode_message(bad_magic)
    bad_version = bytes(data[:4]) + bytes([WIRE_VERSION + 1]) + bytes(data[5:])
    with pytest.raises(MessageError, match="version"):
        decode_message(bad_version)
    bad_type = bytes(data[:5]) + bytes([200]) + bytes(data[6:])
    with pytest.raises(MessageError, match="unknown message type"):
        decode_message(bad_type)
    other = AdvertiseKeys if not isinstance(msg, AdvertiseKeys) else Roster
    with pytest.raises(MessageError, match="expected"):
        decode_message(bytes(data), other)


def test_masked_input_payload_is_zero_copy() -> None:
    data = MaskedInput(RID, 1, b"\x07" * 64).encode()
    back = decode_message(data)
    assert isinstance(back, MaskedInput)
    assert isinstance(back.payload, memoryview)
    assert back.payload.obj is data  # a view into the received buffer, not a copy
    assert bytes(back.payload) == b"\x07" * 64
    assert hash(back) == hash(MaskedInput(RID, 1, b"\x07" * 64))


@pytest.mark.parametrize(
    "build",
    [
        lambda: AdvertiseKeys(b"short", 1, K1, K2),
        lambda: AdvertiseKeys(RID * 5, 1, K1, K2),
        lambda: AdvertiseKeys(RID, 0, K1, K2),
        lambda: AdvertiseKeys(RID, 1, K1[:31], K2),
        lambda: AdvertiseKeys(RID, True, K1, K2),
        lambda: Roster(RID, (RosterEntry(2, K1, K2), RosterEntry(1, K2, K1))),  # unsorted
        lambda: Roster(RID, (RosterEntry(1, K1, K2), RosterEntry(1, K2, K1))),  # duplicate
        lambda: Roster(RID, [RosterEntry(1, K1, K2)]),  # type: ignore[arg-type]
        lambda: ShareKeys(RID, 1, (EncryptedShare(2, b""),)),
        lambda: SharePayload(RID, 2, 2, b"k", b"s"),
        lambda: MaskedInput(RID, 1, b""),
        lambda: MaskedInput(RID, 1, "text"),  # type: ignore[arg-type]
        lambda: UnmaskRequest(RID, 1, (3, 2), ()),
        lambda: UnmaskRequest(RID, 1, (2, 2), ()),
        lambda: UnmaskShares(RID, 1, (RevealedShare(2, b"a"), RevealedShare(2, b"b")), ()),
        lambda: RoundConfig(RID, 10, 0, 20, 4, 3, 1, 1, 3, 3),
        lambda: RoundConfig(RID, 10, 5, 65, 4, 3, 1, 1, 3, 3),
        lambda: RoundConfig(RID, 10, 5, 32, 10, 3, 1, 1, 3, 3),
        lambda: RoundConfig(RID, 10, 5, 32, 4, 3, 1, 1, 3, 3, 1),  # type: ignore[arg-type]
        lambda: Abort(RID, "x" * 2000),
    ],
)
def test_constructor_validates(build: object) -> None:
    with pytest.raises(MessageError):
        build()  # type: ignore[operator]
    assert issubclass(MessageError, SecAggValueError)


def test_decoder_rejects_noncanonical_lists_and_flags() -> None:
    good = UnmaskRequest(RID, 1, (2, 3), ()).encode()
    # swap the two survivor ids in place -> unsorted list
    head = len(good) - 12 - 8  # ... | 2 | 3 | count(dropped)=0 | count(survivor_set)=0 | count(signatures)=0
    forged = good[:head] + struct.pack(">I", 3) + struct.pack(">I", 2) + good[head + 8 :]
    with pytest.raises(MessageError, match="sorted"):
        decode_message(forged)
    cfg = RoundConfig(RID, 10, 1000, 20, 4, 3, 1, 1, 3, 3, True).encode()
    with pytest.raises(MessageError, match="flag"):
        decode_message(cfg[:-1] + b"\x02")
    # a huge element count cannot make the decoder allocate
    roster = Roster(RID, ()).encode()
    with pytest.raises(MessageError, match="count"):
        decode_message(roster[:-4] + struct.pack(">I", 2**31))
    bad_utf8 = Abort(RID, "ab").encode()[:-2] + b"\xff\xfe"
    with pytest.raises(MessageError, match="UTF-8"):
        decode_message(bad_utf8)
    with pytest.raises(MessageError):
        decode_message("not bytes")  # type: ignore[arg-type]


ids = st.integers(1, 2**32 - 1)


@settings(max_examples=40, deadline=None)
@given(
    rid=st.binary(min_size=16, max_size=64),
    receiver=ids,
    alive=st.sets(ids, max_size=20),
    dead=st.sets(ids, max_size=20),
    blobs=st.lists(st.tuples(ids, st.binary(min_size=1, max_size=50)), max_size=10, unique_by=lambda t: t[0]),
)
def test_property_round_trip(
    rid: bytes, receiver: int, alive: set[int], dead: set[int], blobs: list[tuple[int, bytes]]
) -> None:
    items = tuple(EncryptedShare(p, b) for p, b in sorted(blobs))
    revealed = tuple(RevealedShare(p, b) for p, b in sorted(blobs))
    for msg in (
        UnmaskRequest(rid, receiver, tuple(sorted(alive)), tuple(sorted(dead))),
        ShareDelivery(rid, receiver, items),
        ShareKeys(rid, receiver, items),
        UnmaskShares(rid, receiver, revealed, revealed),
    ):
        data = msg.encode()
        assert decode_message(data) == msg
        assert dataclasses.replace(decode_message(data)).encode() == data


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=200))
def test_property_random_bytes_never_crash(data: bytes) -> None:
    for blob in (data, MAGIC + bytes([WIRE_VERSION]) + data):
        try:
            msg = decode_message(blob)
        except MessageError:
            continue
        assert dataclasses.replace(msg).encode() == blob  # whatever decodes is canonical
