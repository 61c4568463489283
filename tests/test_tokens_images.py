"""Token tables, word look-up and validation; reading odd photos."""
import re

import numpy as np
import pytest
from PIL import Image

from suppresseot.errors import SuppressEOTError
from suppresseot.images import load_rgb, load_square
from suppresseot.tokens import Tokenizer, find_phrase, resolve_groups, token_table, validate_group
from conftest import TOKENIZER_DIR

PROMPT = "A man with a beard wearing glasses and a hat in blue shirt"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_files(TOKENIZER_DIR / "vocab.json", TOKENIZER_DIR / "merges.txt")


def test_token_table_indices(tokenizer):
    table = token_table(tokenizer, PROMPT)
    assert table.n == 15
    assert table.words[0] == "<|startoftext|>" and table.words[-1] == "<|endoftext|>"
    assert table.words[5] == "beard" and table.words[7] == "glasses"
    assert [r["kind"] for r in table.as_rows()][:2] == ["start", "word"]
    assert "14..76" in table.format()


def test_words_map_to_indices(tokenizer):
    table = token_table(tokenizer, PROMPT)
    assert find_phrase(tokenizer, table, "a beard") == [4, 5]
    assert find_phrase(tokenizer, table, "Glasses") == [7]
    assert find_phrase(tokenizer, table, "a") == [1, 4, 9]  # every occurrence
    assert resolve_groups(tokenizer, table, [[4, 5], "glasses", 10]) == [[4, 5], [7], [10]]
    van_gogh = token_table(tokenizer, "A dog in Van Gogh Style")
    assert find_phrase(tokenizer, van_gogh, "Van Gogh Style") == [4, 5, 6]


@pytest.mark.parametrize("group,message", [
    ([0], "index 0 is the start token"),
    ([14], "past the prompt's last word (index 13"),
    ([77], "outside 1..13"),
    ([-1], "outside 1..13"),
    ([], "empty token group"),
])
def test_bad_indices(tokenizer, group, message):
    with pytest.raises(SuppressEOTError, match=re.escape(message)):
        validate_group(token_table(tokenizer, PROMPT), group)


def test_word_not_in_prompt_lists_the_tokens(tokenizer):
    with pytest.raises(SuppressEOTError, match=r"'cat' is not in the prompt's tokens \(1:a, 2:man"):
        find_phrase(tokenizer, token_table(tokenizer, PROMPT), "cat")


def test_prompt_too_long(tokenizer):
    with pytest.raises(SuppressEOTError, match="the prompt has 80 tokens but CLIP takes at most 75"):
        token_table(tokenizer, " ".join(["dog"] * 80))


def make_image(path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (40, 60), dtype=np.uint16)).save(path)
    else:
        Image.new(mode, (60, 40), {"RGBA": (10, 20, 30, 40), "L": 128, "CMYK": (0, 255, 0, 0),
                                   "P": 3, "RGB": (1, 2, 3)}[mode]).save(path)


@pytest.mark.parametrize("mode,suffix", [("RGBA", "png"), ("L", "png"), ("CMYK", "jpg"), ("I;16", "png"),
                                         ("P", "png")])
def test_non_rgb_images_become_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"img.{suffix}"
    make_image(path, mode)
    image = load_rgb(path)
    assert image.mode == "RGB"
    crop = load_square(path)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    if mode == "RGBA":  # the official code keeps the colour channels, ignoring alpha
        assert tuple(np.asarray(image)[0, 0]) == (10, 20, 30)
    if mode == "I;16":  # 16-bit grey is rescaled, not clipped to white
        assert 0 < np.asarray(image).mean() < 255 and np.asarray(image).std() > 10


def test_center_crop_keeps_the_middle_square(tmp_path):
    array = np.zeros((100, 300, 3), np.uint8)
    array[:, 100:200] = 255  # the middle third is white
    Image.fromarray(array).save(tmp_path / "wide.png")
    crop = load_square(tmp_path / "wide.png")
    assert crop[:, 5:-5].min() > 200


@pytest.mark.parametrize("content,message", [(None, "does not exist"), (b"not an image", "cannot read")])
def test_missing_or_unreadable_image(tmp_path, content, message):
    path = tmp_path / "photo.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SuppressEOTError, match=message):
        load_rgb(path)
