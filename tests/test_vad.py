"""The speech segmenter on real clips joined with silence, on silence and noise, and its streaming logic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge_ser.audio import load_audio
from edge_ser.features import trim_quiet_edges
from edge_ser.types import AudioBlock, SpeechBoundary
from edge_ser.vad import EnergyGate, Segmenter, VadConfig, voicing
from trainer.streams import noise

DATA = Path("/work/shared/data")
CLIPS = ["tess/OAF_angry/OAF_dead_angry.opus", "ravdess/Actor_05/03-01-04-02-01-02-05.opus",
         "emodb/wav/03a01Fa.opus"]
GAP_S = 1.5

Item = SpeechBoundary | AudioBlock


@pytest.fixture(scope="module")
def joined() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Three real clips separated (and surrounded) by 1.5 s of digital silence, and each clip's span."""
    if not all((DATA / c).exists() for c in CLIPS):
        pytest.skip(f"real audio not available under {DATA}")
    silence = np.zeros(round(GAP_S * 16000), dtype=np.float32)
    parts, spans, t = [silence], [], GAP_S
    for clip in CLIPS:
        x = load_audio(DATA / clip)
        spans.append((t, t + x.size / 16000))
        parts += [x, silence]
        t += x.size / 16000 + GAP_S
    return np.concatenate(parts), spans


def feed(seg: Segmenter, signal: np.ndarray, block: int = 1600, t0: float = 0.0) -> list[Item]:
    out: list[Item] = []
    for i in range(0, signal.size, block):
        out += seg.push(AudioBlock(seg.stream_id, t0 + i / 16000, signal[i:i + block]))
    return out + seg.flush()


def boundaries(items: list[Item]) -> list[SpeechBoundary]:
    return [b for b in items if isinstance(b, SpeechBoundary)]


def test_finds_one_segment_per_clip_near_the_joins(joined: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, spans = joined
    items = feed(Segmenter("s", VadConfig()), signal)
    marks = boundaries(items)
    assert [b.kind for b in marks] == ["start", "end"] * len(CLIPS)
    assert [b.segment_id for b in marks] == [0, 0, 1, 1, 2, 2]
    for (start, end), (lo, hi) in zip(zip(marks[::2], marks[1::2], strict=True), spans, strict=True):
        # inside the clip, allowing the pre-roll before it; the clips carry their own leading silence
        assert lo - 0.25 <= start.t < end.t <= hi + 0.1
        assert end.t - start.t > 0.5


def test_speech_blocks_carry_their_true_time(joined: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, _ = joined
    t_offset = 12.5
    items = feed(Segmenter("s", VadConfig()), signal, t0=t_offset)
    open_segment = None
    for item in items:
        if isinstance(item, SpeechBoundary):
            open_segment = item if item.kind == "start" else None
            continue
        assert open_segment is not None, "speech audio outside a segment"
        i = round((item.t0 - t_offset) * 16000)
        assert abs(item.t0 - t_offset - i / 16000) < 1e-9
        np.testing.assert_array_equal(item.samples, signal[i:i + item.samples.size])
        assert item.t0 >= open_segment.t


def test_block_size_does_not_change_the_result(joined: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, _ = joined
    a = feed(Segmenter("s", VadConfig()), signal, block=1600)
    b = feed(Segmenter("s", VadConfig()), signal, block=777)
    assert [(x.kind, x.t) for x in boundaries(a)] == [(x.kind, x.t) for x in boundaries(b)]
    speech_a = np.concatenate([x.samples for x in a if isinstance(x, AudioBlock)])
    speech_b = np.concatenate([x.samples for x in b if isinstance(x, AudioBlock)])
    np.testing.assert_array_equal(speech_a, speech_b)


@pytest.mark.parametrize("level", [0.0, 0.001, 0.003, 0.01])
def test_silence_and_low_noise_give_nothing(level: float) -> None:
    noise = (np.random.default_rng(7).standard_normal(16000 * 5) * level).astype(np.float32)
    assert feed(Segmenter("s", VadConfig()), noise) == []


def test_long_speech_is_split_at_max_segment(joined: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, _ = joined
    items = feed(Segmenter("s", VadConfig(max_segment_s=1.0, aggressiveness=0)), signal)
    marks = boundaries(items)
    assert len(marks) > 2 * len(CLIPS)  # at least one clip was split
    for start, end in zip(marks[::2], marks[1::2], strict=True):
        assert start.kind == "start" and end.kind == "end" and start.segment_id == end.segment_id
        assert end.t - start.t <= 1.0 + 1e-9
    splits = [(e, s) for e, s in zip(marks[1::2], marks[2::2], strict=False) if abs(e.t - s.t) < 1e-9]
    assert splits, "a split is an end and a start at the same instant"
    assert [b.segment_id for b in marks[::2]] == list(range(len(marks) // 2))


def test_flush_closes_an_open_segment_and_ids_keep_counting_after_reset(
        joined: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, spans = joined
    seg = Segmenter("s", VadConfig())
    cut = round((spans[0][0] + 0.9) * 16000)  # in the middle of the first clip's speech
    items: list[Item] = []
    for i in range(0, cut, 1600):
        items += seg.push(AudioBlock("s", i / 16000, signal[i:min(i + 1600, cut)]))
    assert seg.in_speech and [b.kind for b in boundaries(items)] == ["start"]
    tail = seg.flush()
    assert [b.kind for b in boundaries(tail)] == ["end"] and not seg.in_speech
    assert seg.flush() == []
    seg.reset()
    again = feed(seg, signal[:round(spans[1][0] * 16000)], t0=100.0)
    assert [b.segment_id for b in boundaries(again)] == [1, 1]
    assert boundaries(again)[0].t >= 100.0


def test_a_gap_in_stream_time_closes_the_segment(joined: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    signal, spans = joined
    seg = Segmenter("s", VadConfig())
    first = signal[: round((spans[0][0] + 0.9) * 16000)]
    items = [x for i in range(0, first.size, 1600) for x in seg.push(AudioBlock("s", i / 16000,
                                                                                 first[i:i + 1600]))]
    later = seg.push(AudioBlock("s", 50.0, np.zeros(1600, dtype=np.float32)))
    assert [b.kind for b in boundaries(items + later)] == ["start", "end"]


def test_wrong_stream_and_bad_config_are_refused() -> None:
    seg = Segmenter("a", VadConfig())
    with pytest.raises(ValueError, match="stream 'b'"):
        seg.push(AudioBlock("b", 0.0, np.zeros(160, dtype=np.float32)))
    with pytest.raises(ValidationError, match="frame_ms"):
        VadConfig(frame_ms=25)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="aggressiveness"):
        VadConfig(aggressiveness=4)
    with pytest.raises(ValidationError, match="extra"):
        VadConfig(hangover=3)  # type: ignore[call-arg]


def test_tiny_blocks_and_short_frames() -> None:
    """Blocks shorter than a frame are buffered; 10 ms frames work the same way (pure logic, synthetic)."""
    seg = Segmenter("s", VadConfig(frame_ms=10))
    out = [x for i in range(0, 16000, 37)
           for x in seg.push(AudioBlock("s", i / 16000, np.zeros(min(37, 16000 - i), dtype=np.float32)))]
    assert out == [] and not seg.in_speech


def _noise_joined(clips: list[np.ndarray], gap_s: float, level_dbfs: float) -> tuple[np.ndarray, list[float]]:
    """Real clips joined by pink noise at ``level_dbfs`` RMS (as in shift streams, seeded); returns the signal
    and the clip starts."""
    rng = np.random.default_rng(3)
    parts, starts, t = [], [], 0.0
    for clip in clips:
        parts += [noise(round(gap_s * 16000), "pink", level_dbfs, rng), clip]
        starts.append(t + gap_s)
        t += gap_s + clip.size / 16000
    return np.concatenate(parts), starts


def test_noise_filled_pauses_end_segments_and_noise_alone_opens_none() -> None:
    """Clips joined by 0.6 s of -50 dBFS pink noise: with the energy gate and the voicing test each clip is one
    segment starting at its speech; webrtcvad alone takes noise (and a clip's quiet tail) for speech and starts
a segment well before a clip."""
    if not all((DATA / c).exists() for c in CLIPS):
        pytest.skip(f"real audio not available under {DATA}")
    clips = [load_audio(DATA / c) for c in CLIPS]
    signal, starts = _noise_joined(clips, 0.6, -50.0)
    marks = boundaries(feed(Segmenter("s", VadConfig()), signal))
    opened = [b.t for b in marks if b.kind == "start"]
    assert len(opened) == len(CLIPS)
    for t, clip_start, clip in zip(opened, starts, clips, strict=True):
        assert clip_start - 0.3 <= t < clip_start + clip.size / 16000  # no earlier than pre-roll + a frame
    plain = boundaries(feed(Segmenter("s", VadConfig(gate_above_floor_db=None, min_voiced_ms=0)), signal))
    early = [b.t for b in plain if b.kind == "start" and min(s - b.t for s in [*starts, np.inf] if s >= b.t) > 0.3]
    assert early, f"webrtcvad alone started every segment at a clip: {[(b.kind, b.t) for b in plain]}"


def test_noise_after_an_utterance_ends_its_segment_after_max_unvoiced_ms() -> None:
    """A second of -40 dBFS pink noise right after an utterance passes webrtcvad and the energy gate (it is
    far over the floor): without ``max_unvoiced_ms`` the segment ran on to the end of the noise; now it ends
    300 ms into it, because none of the noise is voiced."""
    if not (DATA / CLIPS[0]).exists():
        pytest.skip(f"real audio not available under {DATA}")
    speech = trim_quiet_edges(load_audio(DATA / CLIPS[0]), 40.0)
    rng = np.random.default_rng(0)
    pad = np.zeros(8000, np.float32)
    signal = np.concatenate([pad, speech, noise(16000, "pink", -40.0, rng), pad])
    speech_end, noise_end = (pad.size + speech.size) / 16000, (pad.size + speech.size + 16000) / 16000
    ends = {m: [b.t for b in boundaries(feed(Segmenter("s", VadConfig(max_unvoiced_ms=m)), signal)) if b.kind == "end"]
            for m in (None, 300)}
    assert len(ends[None]) == len(ends[300]) == 1
    assert ends[None][0] > noise_end - 0.1  # carried through the noise
    assert speech_end < ends[300][0] <= speech_end + 0.3 + 0.07  # 300 ms of it, to the frame


def test_voicing_separates_vowels_from_noise() -> None:
    if not (DATA / CLIPS[0]).exists():
        pytest.skip(f"real audio not available under {DATA}")
    clip = load_audio(DATA / CLIPS[0])
    frames = clip[: clip.size // 480 * 480].reshape(-1, 480)
    loud = frames[np.argsort(-np.square(frames).mean(axis=1))[:10]]  # the loudest 30 ms: vowels
    assert np.median([voicing(f) for f in loud]) > 0.6
    noise = np.random.default_rng(0).standard_normal((20, 480)).astype(np.float32)
    assert max(voicing(f) for f in noise) < 0.5
    assert voicing(np.zeros(480, np.float32)) == 0.0


def test_energy_gate_follows_the_floor_and_never_admits_digital_silence() -> None:
    gate = EnergyGate(above_floor_db=10.0, below_speech_db=30.0, window_frames=100)
    rng = np.random.default_rng(1)
    quiet = [(rng.standard_normal(480) * 10 ** (-60 / 20)).astype(np.float32) for _ in range(80)]
    loud = [(rng.standard_normal(480) * 10 ** (-20 / 20)).astype(np.float32) for _ in range(20)]
    for frame in quiet + loud:
        gate.admits(frame)
    assert -52.0 < gate.threshold_db < -48.0  # floor -60 dB + 10 dB, speech -20 dB - 30 dB
    assert gate.admits(loud[0]) and not gate.admits(quiet[0])
    assert not gate.admits(np.zeros(480, np.float32))  # digital silence, and it leaves the floor alone
    assert -52.0 < gate.threshold_db < -48.0
