"""A small context-mixing coder for short literal streams, shared by make and apply in ``ota.core.delta``.

Why: a metadata-only release carries a hundred-odd bytes of genuinely new text (a doc string, a few
metadata entries). zstd, LZMA and deflate all spend 100 to 110 bytes on 130 such bytes: their block
headers and entropy tables are sized for kilobytes, and on text this short an adaptive model never gets
going. A bitwise context-mixing model (orders 0 to 4, logistic mixing, as in lpaq) primed with 2 KiB of
the base file (an ONNX file's skeleton is protobuf framing and identifiers, the same alphabet as a new doc
string) needs about 76. That matters when the literal is all the patch carries. On kilobytes of text it
still beats zstd -19 (4 KiB of Python source: 1.36 kB against 1.86 kB).

It is slow (pure Python, tens of microseconds a byte), so the format bounds it: it is only used for
literal sections of at most ``MAX_LITERAL`` bytes, primed with at most ``MAX_PRIME`` bytes, so apply spends
a bounded, small time on it whatever the patch says.

Everything is integer arithmetic with fixed tables, so make (on the server) and apply (on a device) compute
exactly the same probabilities on any platform and Python version. The arithmetic coder is lpaq1's binary
coder: 32-bit range, 12-bit probabilities, one byte of flush; bytes past the end of the payload read as
0xFF, so the writer drops trailing 0xFF bytes.
"""

from __future__ import annotations

import operator
from array import array

# Literal streams longer than this are left to zstd: the model matters most on short streams, and this
# bounds apply's time (the model learns or codes about 15 kB/s in CPython: 0.3 s for the largest prime
# and stream together).
MAX_LITERAL = 2048
# Base bytes the model learns from before coding (format.literal_prime chooses them). Over 27 metadata
# edits of the benchmark models (doc strings, metadata entries), 2 KiB of prime codes 3 % smaller than
# 512 B or 1 KiB.
MAX_PRIME = 2048

_ORDERS = 5  # contexts: the last 0, 1, 2, 3 and 4 bytes
_TABLE_BITS = 20
# Counter adaptation: rate 1 / (n + 1.5) for the n-th update of a slot, down to 1 / 21.5 (limit 20): fast to
# learn, which is what short streams need (limits 30 and 60 code the same 27 edits 0.5 % and 1.3 % larger).
_COUNT_LIMIT = 20
_RATES = tuple((2 << 16) // (2 * count + 3) for count in range(_COUNT_LIMIT + 1))
_WEIGHT_INIT = 19661  # 0.3 in 16.16 fixed point
_BIAS = 256  # the mixer's constant input (1.0 in stretch units)
_INPUTS = _ORDERS + 1
# Mixer learning rate: weight += input * error * 3 / 4096 (error and input in 12-bit and stretch units).
_LEARNING_RATE = 3
_TOP = 0xFF000000
_MASK32 = 0xFFFFFFFF
# Context hashing: a multiplier per order, then one per bit position within the byte.
_ORDER_SALT = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1)
_PARTIAL_MULTIPLIER = 0x2545F491
_SLOT_MULTIPLIER = 0x9E3779B1
_SLOT_SHIFT = 32 - _TABLE_BITS


def _squash_table() -> list[int]:
    """Logistic function: stretch units (-2047..2047, 256 per nat of log-odds) to 12-bit probabilities."""
    knots = (1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994, 3348,
             3607, 3785, 3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094)  # fmt: skip
    table = []
    for value in range(-2047, 2048):
        weight = value & 127
        index = (value >> 7) + 16
        table.append((knots[index] * (128 - weight) + knots[index + 1] * weight + 64) >> 7)
    return table


_SQUASH = _squash_table()


def _stretch_table() -> list[int]:
    """Inverse of the squash table: 12-bit probability to stretch units."""
    table = [2047] * 4096
    low = 0
    for value in range(-2047, 2048):
        high = _SQUASH[value + 2047]
        for probability in range(low, high + 1):
            table[probability] = value
        low = max(low, high + 1)
    return table


_STRETCH = _stretch_table()


class _Model:
    """Predicts the next bit of a byte stream from hashed order-0..4 contexts mixed by a small network."""

    def __init__(self) -> None:
        self.probability = array("H", [1 << 15]) * (1 << _TABLE_BITS)
        self.count = bytearray(1 << _TABLE_BITS)
        # One weight set per number of contexts already seen: how much to trust the high orders depends on
        # whether they have any statistics yet.
        self.weights = [[_WEIGHT_INIT] * _INPUTS for _ in range(_ORDERS + 1)]
        self.history = 0  # the last four bytes, most recent lowest
        self._contexts = self._hash_contexts()

    def _hash_contexts(self) -> list[int]:
        history = self.history
        return [
            (((history & ((1 << (8 * order)) - 1)) + order) * _ORDER_SALT[order]) & _MASK32
            for order in range(_ORDERS)
        ]

    def code_byte(self, byte: int | None, bit_coder: _BitCoder) -> int:
        """Code one byte (``byte`` when encoding, ``None`` when decoding) and learn from it.

        Returns:
            The byte coded.
        """
        probability_table = self.probability
        count_table = self.count
        stretch = _STRETCH
        squash = _SQUASH
        rates = _RATES
        weight_sets = self.weights
        contexts = self._contexts
        partial = 1
        for shift in range(7, -1, -1):
            salt = partial * _PARTIAL_MULTIPLIER
            slots = [(((context ^ salt) * _SLOT_MULTIPLIER) & _MASK32) >> _SLOT_SHIFT for context in contexts]
            counts = [count_table[slot] for slot in slots]
            inputs = [
                stretch[probability_table[slot] >> 4] if count else 0
                for slot, count in zip(slots, counts, strict=True)
            ]
            inputs.append(_BIAS)
            weights = weight_sets[_ORDERS - counts.count(0)]
            dot = sum(map(operator.mul, weights, inputs)) >> 16
            p1 = squash[max(-2047, min(2047, dot)) + 2047]  # 1..4094
            bit = bit_coder.code(None if byte is None else (byte >> shift) & 1, p1)
            error = ((bit << 12) - p1) * _LEARNING_RATE
            weights[:] = [
                weight + ((value * error) >> 12) for weight, value in zip(weights, inputs, strict=True)
            ]
            target = bit << 16
            for slot, count in zip(slots, counts, strict=True):
                value = probability_table[slot]
                value += ((target - value) * rates[count]) >> 16
                probability_table[slot] = 64 if value < 64 else (65472 if value > 65472 else value)
                if count < _COUNT_LIMIT:
                    count_table[slot] = count + 1
            partial = (partial << 1) | bit
        coded = partial & 0xFF
        self.history = ((self.history << 8) | coded) & _MASK32
        self._contexts = self._hash_contexts()
        return coded


class _BitCoder:
    """The binary arithmetic coder's interface: code one bit with P(bit = 1) = p1 / 4096."""

    def code(self, bit: int | None, p1: int) -> int:
        raise NotImplementedError


class _Encoder(_BitCoder):
    def __init__(self) -> None:
        self.low = 0
        self.high = _MASK32
        self.out = bytearray()

    def code(self, bit: int | None, p1: int) -> int:
        assert bit is not None
        middle = self.low + ((self.high - self.low) >> 12) * p1
        if bit:
            self.high = middle
        else:
            self.low = middle + 1
        while not (self.low ^ self.high) & _TOP:
            self.out.append(self.high >> 24)
            self.low = (self.low << 8) & _MASK32
            self.high = ((self.high << 8) & _MASK32) | 0xFF
        return bit

    def finish(self) -> bytes:
        self.out.append(self.low >> 24)
        # The decoder reads 0xFF past the end, so trailing 0xFF bytes need not be sent.
        return bytes(self.out).rstrip(b"\xff")


class _Decoder(_BitCoder):
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.position = 0
        self.low = 0
        self.high = _MASK32
        self.value = 0
        for _ in range(4):
            self.value = (self.value << 8) | self._next()

    def _next(self) -> int:
        position = self.position
        self.position += 1
        return self.payload[position] if position < len(self.payload) else 0xFF

    def code(self, bit: int | None, p1: int) -> int:
        middle = self.low + ((self.high - self.low) >> 12) * p1
        decoded = 1 if self.value <= middle else 0
        if decoded:
            self.high = middle
        else:
            self.low = middle + 1
        while not (self.low ^ self.high) & _TOP:
            self.low = (self.low << 8) & _MASK32
            self.high = ((self.high << 8) & _MASK32) | 0xFF
            self.value = ((self.value << 8) & _MASK32) | self._next()
        return decoded


class _Learner(_BitCoder):
    """Priming: the bits are known, nothing is coded."""

    def code(self, bit: int | None, p1: int) -> int:
        assert bit is not None
        return bit


def _primed(prime: bytes) -> _Model:
    if len(prime) > MAX_PRIME:
        raise ValueError(f"prime of {len(prime)} bytes is longer than {MAX_PRIME}")
    model = _Model()
    learner = _Learner()
    for byte in prime:
        model.code_byte(byte, learner)
    return model


def encode(data: bytes, prime: bytes) -> bytes:
    """Compress ``data`` with the model primed on ``prime``.

    Raises:
        ValueError: If ``data`` is longer than MAX_LITERAL or ``prime`` longer than MAX_PRIME (writer bugs).
    """
    if len(data) > MAX_LITERAL:
        raise ValueError(f"literal of {len(data)} bytes is longer than {MAX_LITERAL}")
    model = _primed(prime)
    encoder = _Encoder()
    for byte in data:
        model.code_byte(byte, encoder)
    return encoder.finish()


def decode(payload: bytes, prime: bytes, length: int) -> bytes:
    """Decompress ``length`` bytes from ``payload`` with the model primed on ``prime``.

    Any payload decodes to some bytes (the result's sha256 is what catches a damaged one); a payload with
    bytes the decoder never reached is refused.

    Raises:
        ValueError: If ``length`` or ``prime`` exceeds its bound, or the payload has unused trailing bytes.
    """
    if length > MAX_LITERAL:
        raise ValueError(f"literal of {length} bytes is longer than {MAX_LITERAL}")
    model = _primed(prime)
    decoder = _Decoder(payload)
    out = bytearray(model.code_byte(None, decoder) for _ in range(length))
    if decoder.position < len(payload):
        raise ValueError(f"{len(payload) - decoder.position} unused bytes after the coded literal stream")
    return bytes(out)
