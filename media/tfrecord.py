"""TFRecord files and `tf.train.Example` protos without TensorFlow: CRC-checked framing and a hand-written protobuf
codec. Framing, wire format, errors: docs/formats.md#oxe ("TFRecord and tf.train.Example without TensorFlow")."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, Container, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "ExampleDecodeError", "TFRecordError", "TFRecordWriter", "crc32c", "encode_example", "encode_record",
    "iter_records", "masked_crc32c", "parse_example", "read_record_at", "scan_records", "write_records",
]

# ------------------------------------------------------------------------------------------------ CRC-32C

_POLY = 0x82F63B78  # Castagnoli polynomial 0x1EDC6F41, bit-reflected
_MASK_DELTA = 0xA282EAD8


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()
_TABLE_NP = np.array(_TABLE, dtype=np.uint32)
_VECTOR_MIN = 4096  # below this many bytes the plain byte loop is quicker than setting up numpy lanes
_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)  # [byte, bit] set?


def _update_bytewise(reg: int, data: bytes | memoryview) -> int:
    table = _TABLE
    for b in bytes(data):
        reg = table[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _update(reg: int, data: bytes | memoryview) -> int:
    """Advance a reflected CRC-32C register over `data` (no pre/post inversion)."""
    n = len(data)
    if n < _VECTOR_MIN:
        return _update_bytewise(reg, data)
    # lanes x length: lane i holds data[i*L:(i+1)*L]; ~sqrt(5n) lanes balances numpy call overhead against the
    # Python fold below.
    lanes = max(2, int(math.sqrt(5 * n)))
    length = n // lanes
    body = lanes * length
    block = np.zeros((length, lanes + 32), np.uint8)
    block[:, :lanes] = np.frombuffer(data, np.uint8, count=body).reshape(lanes, length).T
    regs = np.zeros(lanes + 32, np.uint32)
    # 32 extra lanes start at the basis vectors and eat zero bytes: they end as the columns of the
    # "advance by `length` zero bytes" operator, which joins the lanes.
    regs[lanes:] = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    table = _TABLE_NP
    for row in block:
        regs = table[(regs ^ row) & 0xFF] ^ (regs >> 8)
    cols = regs[lanes:]
    shift = [np.bitwise_xor.reduce(np.where(_BITS, cols[8 * k : 8 * k + 8], np.uint32(0)), axis=1).tolist()
             for k in range(4)]
    t0, t1, t2, t3 = shift
    # raw(reg, A || B) = advance_|B|(raw(reg, A)) ^ raw(0, B): fold the lanes in data order
    for lane_crc in regs[:lanes].tolist():
        reg = t0[reg & 0xFF] ^ t1[(reg >> 8) & 0xFF] ^ t2[(reg >> 16) & 0xFF] ^ t3[reg >> 24] ^ lane_crc
    return _update_bytewise(reg, memoryview(data)[body:]) if body < n else reg


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of `data`; pass a previous result as `crc` to continue it over more data."""
    return _update(crc ^ 0xFFFFFFFF, data) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------------------ TFRecord


class TFRecordError(ValueError):
    """A TFRecord file is truncated or corrupt; the message names the file and the record's byte offset."""

    def __init__(self, path: str | os.PathLike, offset: int, problem: str):
        self.path, self.offset, self.problem = str(path), offset, problem
        super().__init__(f"{Path(path).name}: record at byte offset {offset}: {problem}")


_HEADER = struct.Struct("<QI")


def encode_record(data: bytes) -> bytes:
    """One framed record (header, data, data CRC)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _read_header(f: BinaryIO, path: str | os.PathLike, offset: int, size: int) -> int:
    """The data length of the record at `offset` (length CRC checked). `size` is the file size."""
    f.seek(offset)
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise TFRecordError(path, offset, f"truncated: the 12-byte record header is cut after {len(header)} bytes "
                                          f"(file ends at byte {size})")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise TFRecordError(path, offset, "corrupt: length CRC mismatch (the header is damaged or this is not a "
                                          "TFRecord file)")
    end = offset + _HEADER.size + length + 4
    if end > size:
        raise TFRecordError(path, offset, f"truncated: the record declares {length} data bytes and ends at byte "
                                          f"{end}, but the file ends at byte {size}")
    return length


def read_record_at(f: BinaryIO, path: str | os.PathLike, offset: int, size: int | None = None,
                   verify: bool = True) -> tuple[bytes, int]:
    """(data, offset of the next record) for the record starting at `offset` in the open file `f`."""
    if size is None:
        size = os.fstat(f.fileno()).st_size
    length = _read_header(f, path, offset, size)
    data = f.read(length)
    (data_crc,) = struct.unpack("<I", f.read(4))
    if verify and masked_crc32c(data) != data_crc:
        raise TFRecordError(path, offset, f"corrupt: data CRC mismatch over its {length} bytes")
    return data, offset + _HEADER.size + length + 4


def iter_records(path: str | os.PathLike, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """(byte offset, data) of every record in file order; TFRecordError at the first bad one."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            data, next_offset = read_record_at(f, path, offset, size, verify)
            yield offset, data
            offset = next_offset


def scan_records(path: str | os.PathLike) -> tuple[list[tuple[int, int]], TFRecordError | None]:
    """Locate records by their headers only (12 bytes read and one seek per record; data CRCs unchecked).

    Returns ([(offset, data length), ...], the framing error that stopped the scan or None). Records after a
    damaged header cannot be located, so the list ends there.
    """
    found: list[tuple[int, int]] = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                length = _read_header(f, path, offset, size)
            except TFRecordError as e:
                return found, e
            found.append((offset, length))
            offset += _HEADER.size + length + 4
    return found, None


class TFRecordWriter:
    """Append framed records to a file: `with TFRecordWriter(path) as w: w.write(data)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = open(self.path, "wb")
        self.count = 0
        self.offsets: list[int] = []

    def write(self, data: bytes) -> int:
        """Write one record; returns its byte offset."""
        offset = self._f.tell()
        self._f.write(encode_record(bytes(data)))
        self.offsets.append(offset)
        self.count += 1
        return offset

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_records(path: str | os.PathLike, records: Sequence[bytes]) -> list[int]:
    """Write `records` to `path`; returns their byte offsets."""
    with TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
        return list(w.offsets)


# ------------------------------------------------------------------------------------------------ Example protos


class ExampleDecodeError(ValueError):
    """The bytes are not a well-formed tf.train.Example."""




def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise ExampleDecodeError("varint runs past the end of its field")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ExampleDecodeError("varint longer than 10 bytes")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end or varint value) over one message's bytes."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ExampleDecodeError(f"field {number}: length {n} runs past the end of its message")
            yield number, wire, pos, pos + n
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise ExampleDecodeError(f"field {number}: fixed32 runs past the end of its message")
            yield number, wire, pos, pos + 4
            pos += 4
        elif wire == 1:
            if pos + 8 > end:
                raise ExampleDecodeError(f"field {number}: fixed64 runs past the end of its message")
            yield number, wire, pos, pos + 8
            pos += 8
        else:
            raise ExampleDecodeError(f"field {number}: unsupported wire type {wire}")


def _to_int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: bytes, start: int, end: int) -> list[bytes] | np.ndarray:
    value: list[bytes] | np.ndarray = []
    for number, wire, s, e in _fields(buf, start, end):
        if wire != 2:
            continue  # not a list message: unknown field, skipped as protobuf does
        if number == 1:  # BytesList
            value = [buf[a:b] for n, w, a, b in _fields(buf, s, e) if n == 1 and w == 2]
        elif number == 2:  # FloatList: packed runs (wire 2) and/or single fixed32 (wire 5)
            parts = []
            for n, w, a, b in _fields(buf, s, e):
                if n != 1:
                    continue
                if w == 2:
                    if (b - a) % 4:
                        raise ExampleDecodeError(f"packed float list of {b - a} bytes is not a multiple of 4")
                    parts.append(np.frombuffer(buf, "<f4", count=(b - a) // 4, offset=a))
                elif w == 5:
                    parts.append(np.frombuffer(buf, "<f4", count=1, offset=a))
            value = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        elif number == 3:  # Int64List: packed varints (wire 2) and/or single varints (wire 0)
            ints: list[int] = []
            for n, w, a, b in _fields(buf, s, e):
                if n != 1:
                    continue
                if w == 2:
                    pos = a
                    while pos < b:
                        v, pos = _varint(buf, pos, b)
                        ints.append(_to_int64(v))
                elif w == 0:
                    ints.append(_to_int64(a))
            value = np.array(ints, dtype=np.int64)
    return value


def parse_example(data: bytes, keys: Container[str] | None = None) -> dict[str, list[bytes] | np.ndarray]:
    """Decode a serialized tf.train.Example into {feature name: values} (only `keys` when given)."""
    buf = bytes(data)
    out: dict[str, list[bytes] | np.ndarray] = {}
    try:
        for number, wire, s, e in _fields(buf, 0, len(buf)):
            if number == 2 and wire == 2:
                raise ExampleDecodeError("the record has field 2 (feature_lists): it is a tf.train.SequenceExample, "
                                         "not a tf.train.Example")
            if number != 1 or wire != 2:
                continue
            for n, w, es, ee in _fields(buf, s, e):  # Features: map entries
                if n != 1 or w != 2:
                    continue
                key, feature = None, None
                for fn, fw, a, b in _fields(buf, es, ee):
                    if fn == 1 and fw == 2:
                        key = buf[a:b]
                    elif fn == 2 and fw == 2:
                        feature = (a, b)
                if key is None:
                    raise ExampleDecodeError("a feature map entry has no key")
                name = key.decode("utf-8", errors="replace")
                if keys is not None and name not in keys:
                    continue
                out[name] = _decode_feature(buf, *feature) if feature else []
    except ExampleDecodeError:
        raise
    except (IndexError, ValueError) as e:  # pragma: no cover - defensive: malformed buffers
        raise ExampleDecodeError(f"malformed Example: {e}") from e
    return out


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _enc_varint((number << 3) | 2) + _enc_varint(len(payload)) + payload


def _feature_kind(value: Any) -> tuple[str, Any]:
    if isinstance(value, (bytes, str)):
        value = [value]
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        if kind == "f":
            return "float", value.astype("<f4").ravel()
        if kind in "iub":
            return "int64", value.astype(np.int64).ravel()
        if kind in "SUO":
            return "bytes", list(value.ravel())
        raise TypeError(f"cannot store dtype {value.dtype} in a tf.train.Feature")
    value = list(value)
    if not value:
        raise TypeError("an empty list has no kind; pass a typed numpy array (float32, int64 or bytes)")
    if all(isinstance(v, (bytes, str)) for v in value):
        return "bytes", value
    if all(isinstance(v, (bool, int, np.integer, np.bool_)) for v in value):
        return "int64", np.asarray(value, dtype=np.int64)
    if all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in value):
        return "float", np.asarray(value, dtype="<f4")
    raise TypeError(f"mixed or unsupported values for a tf.train.Feature: {value[:3]!r}")


def encode_feature(value: Any, packed: bool = True) -> bytes:
    """One serialized Feature: bytes/str values -> bytes_list, floats -> float_list, ints/bools -> int64_list."""
    kind, vals = _feature_kind(value)
    if kind == "bytes":
        body = b"".join(_len_field(1, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in vals)
        return _len_field(1, body)
    if kind == "float":
        if packed:
            body = _len_field(1, vals.tobytes()) if len(vals) else b""
        else:
            body = b"".join(b"\x0d" + struct.pack("<f", v) for v in vals.tolist())
        return _len_field(2, body)
    if packed:
        body = _len_field(1, b"".join(_enc_varint(v) for v in vals.tolist())) if len(vals) else b""
    else:
        body = b"".join(b"\x08" + _enc_varint(v) for v in vals.tolist())
    return _len_field(3, body)


def encode_example(features: Mapping[str, Any], packed: bool = True) -> bytes:
    """Serialize {name: values} as a tf.train.Example (keys in sorted order, so output is deterministic)."""
    entries = b"".join(
        _len_field(1, _len_field(1, name.encode("utf-8")) + _len_field(2, encode_feature(features[name], packed)))
        for name in sorted(features)
    )
    return _len_field(1, entries)
