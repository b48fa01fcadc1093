"""Telephony PCM codecs in numpy: G.711 mu-law and A-law (lookup tables, no audioop) and s16le.

Decoders map bytes to float32 in [-1, 1] (16-bit linear / 32768). The encoders follow the ITU-T G.711
reference (Sun's ``g711.c``) and exist for clients and tests that need to produce telephony audio.
"""

from __future__ import annotations

import numpy as np

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159


def _mulaw_to_linear(codes: np.ndarray) -> np.ndarray:
    u = ~codes.astype(np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + _ULAW_BIAS
    t <<= (u & 0x70) >> 4
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_to_linear(codes: np.ndarray) -> np.ndarray:
    a = codes.astype(np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_CODES = np.arange(256, dtype=np.uint8)
MULAW_TO_INT16: np.ndarray = _mulaw_to_linear(_CODES)
"""The 256 mu-law code words as 16-bit linear values (range +-32124)."""
ALAW_TO_INT16: np.ndarray = _alaw_to_linear(_CODES)
"""The 256 A-law code words as 16-bit linear values (range +-32256)."""
_MULAW_TO_FLOAT = (MULAW_TO_INT16 / 32768.0).astype(np.float32)
_ALAW_TO_FLOAT = (ALAW_TO_INT16 / 32768.0).astype(np.float32)


def decode_mulaw(data: bytes) -> np.ndarray:
    """G.711 mu-law bytes (one sample each) to float32 in [-1, 1]."""
    return _MULAW_TO_FLOAT[np.frombuffer(data, dtype=np.uint8)]


def decode_alaw(data: bytes) -> np.ndarray:
    """G.711 A-law bytes (one sample each) to float32 in [-1, 1]."""
    return _ALAW_TO_FLOAT[np.frombuffer(data, dtype=np.uint8)]


def decode_s16le(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes (an even number of them) to float32 in [-1, 1]."""
    if len(data) % 2:
        raise ValueError(f"s16le data must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int32)


def encode_mulaw(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to G.711 mu-law bytes (ITU-T reference algorithm)."""
    pcm = _to_int16(samples) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    pcm = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, pcm, side="left")
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((pcm >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return (uval ^ mask).astype(np.uint8).tobytes()


def encode_alaw(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to G.711 A-law bytes (ITU-T reference algorithm)."""
    pcm = _to_int16(samples) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    pcm = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_SEG_AEND, pcm, side="left")
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    aval = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((pcm >> shift) & 0x0F))
    return (aval ^ mask).astype(np.uint8).tobytes()


def encode_s16le(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to little-endian signed 16-bit PCM bytes."""
    return _to_int16(samples).astype("<i2").tobytes()
