"""The corpus's data-driven inputs: `speech` windows at the entry's `audio_scale`, and `frames`
(consecutive rows of an array a front end computed, as openWakeWord's models read)."""

from __future__ import annotations

import numpy as np
import pytest

from codesign.corpus import load_corpus
from codesign.errors import UsageError

ENTRY = """
[[model]]
name = "wake"
file = "wake.onnx"
input_shapes = {{ "x.1" = [1, 4, 3], audio = [1, 8] }}
inputs = {{ "x.1" = "frames", audio = "speech" }}
data = "features.npz"
frames = "embedding"
{extra}
"""


def _corpus(tmp_path, extra: str = "", kind: str = "frames"):
    rows = np.arange(30, dtype=np.float32).reshape(10, 3)  # row r holds 3r, 3r + 1, 3r + 2
    np.savez(tmp_path / "features.npz", embedding=rows, audio=np.arange(100, dtype=np.int16) * 300)
    (tmp_path / "corpus.toml").write_text(ENTRY.format(extra=extra).replace('"frames", audio', f'"{kind}", audio'))
    return load_corpus(tmp_path)


def test_frames_are_consecutive_rows_and_speech_takes_the_entry_scale(tmp_path):
    (default,) = _corpus(tmp_path)
    (int16_scale,) = _corpus(tmp_path, "audio_scale = 1.0")
    for seed in range(5):
        sample = default.sample(seed)
        frames = sample["x.1"].reshape(4, 3)
        first = int(frames[0, 0]) // 3
        assert np.array_equal(frames, np.arange(3 * first, 3 * first + 12, dtype=np.float32).reshape(4, 3))
        scaled = int16_scale.sample(seed)["audio"]
        assert np.allclose(scaled, sample["audio"] * 32768) and np.abs(scaled).max() > 1
        assert np.all(np.diff(scaled[0]) == 300)  # consecutive samples of the recording


def test_an_unknown_input_kind_is_named(tmp_path):
    with pytest.raises(UsageError, match="unknown input kind rows"):
        _corpus(tmp_path, kind="rows")
