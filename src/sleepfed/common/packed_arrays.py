"""The model's arrays as ``.npy`` bytes inside a ConfigRecord, on the wire between the
ServerApp and a board.

Flower 1.42 sends every object of a message as an HTTP request of its own (the Message, its
RecordDict, each record, and each Array and ArrayChunk), each with ~0.75 KB of request line
and signed headers whatever its size. An ArrayRecord of the model's one small array costs
three of them (ArrayRecord, Array, ArrayChunk). Packed, the arrays ride in the ConfigRecord a
train or evaluate message already carries (its config), or in one of their own in a reply:
a train message is 3 objects instead of 6, a board's update 4 instead of 6.

Both ends pack and unpack: the ServerApp's round loop (sleepfed.server.app.round_loop) and
the board's outermost mod (sleepfed.board.training.privacy_mods), so strategies, mods and the
ClientApp see ArrayRecords as before. A message that is not packed passes through untouched
(SecAgg+'s legacy workflow, Flower's simulation); boards and server upgrade together.

Unpacking is the trust boundary: each array must be a canonical ``.npy`` without pickled
objects (``numpy.load(allow_pickle=False)``, re-serialised byte-identical), named once.
Anything else raises :class:`PackedArraysError`.
"""

from __future__ import annotations

import io

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

# A reply's record of packed arrays (a message without a config of its own).
PACKED_RECORD = "packed-arrays"
# + the ArrayRecord's name: the .npy bytes of its arrays, in order / their names.
DATA_PREFIX = "packed-arrays:"
NAMES_PREFIX = "packed-array-names:"
NUMPY_STYPE = "numpy.ndarray"


class PackedArraysError(ValueError):
    """Packed arrays that do not unpack to an ArrayRecord of canonical numpy arrays."""


def _packable(content: RecordDict) -> bool:
    records = list(content.array_records.values())
    return bool(records) and all(
        len(record) > 0 and all(a.stype == NUMPY_STYPE for a in record.values())
        for record in records
    )


def pack(content: RecordDict) -> RecordDict:
    """``content`` with its ArrayRecords moved into its one ConfigRecord (or into
    ``PACKED_RECORD`` when it has none or several). Content without arrays, or with arrays
    that are not numpy's, is returned as it is."""
    if not _packable(content):
        return content
    configs = content.config_records
    target = next(iter(configs)) if len(configs) == 1 else PACKED_RECORD
    packed = ConfigRecord(dict(configs[target]) if target in configs else {})
    for name, record in content.array_records.items():
        packed[NAMES_PREFIX + name] = list(record.keys())
        packed[DATA_PREFIX + name] = [bytes(array.data) for array in record.values()]
    out = RecordDict()
    for name, record in content.items():
        if name != target and name not in content.array_records:
            out[name] = record
    out[target] = packed
    return out


def is_packed(content: RecordDict) -> bool:
    return any(
        key.startswith((DATA_PREFIX, NAMES_PREFIX))
        for record in content.config_records.values()
        for key in record
    )


def _array(data: object) -> Array:
    if not isinstance(data, bytes):
        raise PackedArraysError(f"an array is {type(data).__name__}, not bytes")
    try:
        value = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise PackedArraysError(f"an array is no .npy: {error}") from None
    if not isinstance(value, np.ndarray):
        raise PackedArraysError("an array is no single .npy array")
    array = Array(value)
    if bytes(array.data) != data:
        raise PackedArraysError("an array's .npy is not canonical (trailing or odd bytes)")
    return array


def _array_record(name: str, names: object, data: object) -> ArrayRecord:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PackedArraysError(f"{name!r}: its array names are missing or not text")
    if not isinstance(data, list) or len(data) != len(names) or len(set(names)) != len(names):
        raise PackedArraysError(f"{name!r}: {len(names)} unique names needed for its arrays")
    return ArrayRecord({n: _array(d) for n, d in zip(names, data, strict=True)})


def unpack(content: RecordDict) -> RecordDict:
    """The inverse of :func:`pack`; raises :class:`PackedArraysError` on anything else."""
    arrays: dict[str, ArrayRecord] = {}
    for record in content.config_records.values():
        for key in record:
            if (
                key.startswith(NAMES_PREFIX)
                and DATA_PREFIX + key[len(NAMES_PREFIX) :] not in record
            ):
                raise PackedArraysError(f"names without arrays: {key!r}")
            if key.startswith(DATA_PREFIX):
                name = key[len(DATA_PREFIX) :]
                if name in arrays:
                    raise PackedArraysError(f"two records named {name!r}")
                arrays[name] = _array_record(name, record.get(NAMES_PREFIX + name), record[key])
    out = without_packed(content)
    for name, arrays_of_name in arrays.items():
        if name in out:
            raise PackedArraysError(f"two records named {name!r}")
        out[name] = arrays_of_name
    return out


def without_packed(content: RecordDict) -> RecordDict:
    """``content`` with every packed array removed (what is left of a reply whose packed
    arrays did not unpack: the server's screening then rejects it for its structure)."""
    out = RecordDict()
    for name, record in content.items():
        if not isinstance(record, ConfigRecord):
            out[name] = record
            continue
        rest = {k: v for k, v in record.items() if not k.startswith((DATA_PREFIX, NAMES_PREFIX))}
        if rest or name != PACKED_RECORD:
            out[name] = ConfigRecord(rest)  # type: ignore[arg-type]
    return out


def packed_arrays_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """The board's end (outermost mod): a packed message is unpacked for the mods and the
    ClientApp inside, and its reply goes back packed."""
    if not is_packed(msg.content):
        return call_next(msg, ctxt)
    msg.content = unpack(msg.content)
    reply = call_next(msg, ctxt)
    if not reply.has_error():
        reply.content = pack(reply.content)
    return reply
