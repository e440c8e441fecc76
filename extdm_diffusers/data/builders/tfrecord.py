"""Read TFRecord files of ``tf.train.Example`` without TensorFlow.

A TFRecord file is a sequence of records::

    uint64 length (little endian) | uint32 masked CRC-32C of length | data | uint32 masked CRC-32C of data

and ``tf.train.Example`` is a small protobuf: ``Example{features=1: Features{feature=1: map<string, Feature>}}``
with ``Feature{bytes_list=1 | float_list=2 | int64_list=3}``, each list holding ``repeated value = 1``.
Both are short enough to decode here, which spares a TensorFlow (or generated-protobuf) dependency.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

_CRC_TABLE: list[int] = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
    _CRC_TABLE.append(_crc)


def _crc32c_python(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # a C implementation makes checking every record affordable; optional
    import google_crc32c as _fast_crc

    def _crc32c_fast(data: bytes) -> int:
        return _fast_crc.value(data)

    FAST_CRC = True
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c_fast = _crc32c_python
    FAST_CRC = False


def crc32c(data: bytes) -> int:
    return _crc32c_fast(data) if FAST_CRC else _crc32c_python(data)


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordError(ValueError):
    pass


def read_records(stream: BinaryIO, name: str = "<stream>", check_data_crc: bool | None = None) -> Iterator[bytes]:
    """Yield the records of a TFRecord stream, checking its framing.

    The length CRC is always checked; the data CRC when ``check_data_crc`` (default:
    only if ``google-crc32c`` is installed -- pure Python CRC of BAIR's 30 GB would
    take an hour).
    """
    if check_data_crc is None:
        check_data_crc = FAST_CRC
    index = 0
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise TFRecordError(f"{name}: truncated header of record {index}")
        length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
        if masked_crc32c(length_bytes) != length_crc:
            raise TFRecordError(f"{name}: record {index} has a bad length checksum (not a TFRecord file, or corrupt)")
        (length,) = struct.unpack("<Q", length_bytes)
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise TFRecordError(f"{name}: record {index} is truncated")
        if check_data_crc and crc32c(data) != _unmask(struct.unpack("<I", footer)[0]):
            raise TFRecordError(f"{name}: record {index} has a bad data checksum (corrupt)")
        yield data
        index += 1


def _unmask(masked: int) -> int:
    rotated = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


def write_record(stream: BinaryIO, data: bytes) -> None:
    """Append one record (used to make test files; BAIR itself is only read)."""
    length = struct.pack("<Q", len(data))
    stream.write(length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data)))


# ------------------------------------------------------------------ protobuf


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(buffer):
            raise TFRecordError("truncated varint in protobuf message")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(buffer: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a protobuf message; value is bytes for length-delimited fields."""
    position = 0
    while position < len(buffer):
        key, position = _varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(buffer, position)
        elif wire_type == 1:
            value, position = buffer[position:position + 8], position + 8
        elif wire_type == 2:
            size, position = _varint(buffer, position)
            value, position = buffer[position:position + size], position + size
            if position > len(buffer):
                raise TFRecordError("truncated length-delimited protobuf field")
        elif wire_type == 5:
            value, position = buffer[position:position + 4], position + 4
        else:
            raise TFRecordError(f"unsupported protobuf wire type {wire_type}")
        yield number, wire_type, value


def parse_example_bytes_features(record: bytes) -> dict[str, list[bytes]]:
    """The ``bytes_list`` features of a serialized ``tf.train.Example`` (float/int64 features are skipped)."""
    features: dict[str, list[bytes]] = {}
    for number, _, features_message in _fields(record):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(features_message):  # map entries
            if entry_number != 1:
                continue
            key, feature = None, None
            for field_number, _, value in _fields(entry):
                if field_number == 1:
                    key = value.decode("utf-8")
                elif field_number == 2:
                    feature = value
            if key is None or feature is None:
                continue
            for kind, _, value_list in _fields(feature):
                if kind == 1:  # bytes_list
                    features[key] = [v for n, _, v in _fields(value_list) if n == 1]
    return features
