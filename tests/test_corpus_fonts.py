"""The fonts the corpus renders text with ship inside the package, and hold every character it draws."""

import string
from pathlib import Path

import numpy as np
from PIL import ImageFont

import codesign
from codesign.corpus import FONT_FILES, WORDS, render_text_line, text_lines

DRAWN = set("".join(WORDS)) | set(string.digits)


def _mask(font, text: str) -> np.ndarray:
    return np.asarray(font.getmask(text))


def test_fonts_ship_inside_the_package():
    package = Path(codesign.__file__).parent
    assert len(FONT_FILES) == 3
    for path in FONT_FILES:
        assert path.is_file() and package in path.parents


def test_fonts_hold_every_character_drawn():
    for path in FONT_FILES:
        font = ImageFont.truetype(str(path), 32)
        missing = _mask(font, "\u4e00")  # not in the cut-down fonts: drawn as .notdef
        for char in DRAWN:
            mask = _mask(font, char)
            assert mask.shape != missing.shape or not np.array_equal(mask, missing), (path.name, char)


def test_a_seed_renders_the_same_lines_twice():
    first, texts = text_lines((1, 3, 48, 320), 6, seed=3)
    again, texts_again = text_lines((1, 3, 48, 320), 6, seed=3)
    assert texts == texts_again and np.array_equal(first, again)
    line = render_text_line(48, 320, np.random.default_rng(3))
    assert (line < 100).sum() > 50  # ink drawn (at most 80) on paper (at least 190): not a blank line
