"""The prompt's CLIP tokens: the index table users pick from, word look-up, and validation.

Index 0 is ``<|startoftext|>``; a prompt of n tokens (start and end included) has its words at
1..n-2, and n-1..76 are the end token and its padding copies: the EOT embeddings that SWR edits.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import SuppressEOTError

MAX_LENGTH = 77
TOKENS_HINT = 'run `suppress-eot tokens "PROMPT"` to see the index of every token'


class Tokenizer:
    """The CLIP BPE tokenizer of Stable Diffusion v1 (through transformers; framework-neutral)."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.bos_token_id = hf_tokenizer.bos_token_id
        self.eos_token_id = hf_tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, subfolder: str = "tokenizer", **hub_kwargs) -> "Tokenizer":
        from transformers import CLIPTokenizer

        return cls(CLIPTokenizer.from_pretrained(str(model), subfolder=subfolder, **hub_kwargs))

    @classmethod
    def from_files(cls, vocab: str | os.PathLike, merges: str | os.PathLike) -> "Tokenizer":
        from transformers import CLIPTokenizer

        return cls(CLIPTokenizer(str(vocab), str(merges), model_max_length=MAX_LENGTH))

    def encode(self, text: str) -> list[int]:
        """Token ids with start and end tokens, not padded."""
        return list(self.hf.encode(text))

    def encode_words(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def padded_ids(self, text: str) -> list[int]:
        """77 ids as the pipeline feeds the text encoder, padded with the tokenizer's pad token: the end token
        repeated (SD 1, SDXL's first tokenizer) or "!" (SD 2, SDXL's second)."""
        ids = self.encode(text)
        if len(ids) > MAX_LENGTH:
            raise SuppressEOTError(
                f"the prompt has {len(ids) - 2} tokens but CLIP takes at most {MAX_LENGTH - 2}: shorten the prompt")
        return ids + [self.hf.pad_token_id] * (MAX_LENGTH - len(ids))

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.hf.convert_ids_to_tokens(i) for i in ids]

    def decode_token(self, token_id: int) -> str:
        return self.hf.decode([token_id]).strip()


@dataclass
class TokenTable:
    """The prompt's tokens with their indices, as users choose from them."""

    prompt: str
    ids: list[int]
    words: list[str]  # decoded text of each token
    pad: str = "<|endoftext|>"  # the padding token after the end token (SD 2 and SDXL's second tokenizer: "!")

    @property
    def n(self) -> int:
        """Number of tokens including start and end (the official code's ``n``)."""
        return len(self.ids)

    @property
    def word_indices(self) -> range:
        return range(1, self.n - 1)

    def as_rows(self) -> list[dict]:
        rows = []
        for i, (tid, word) in enumerate(zip(self.ids, self.words)):
            kind = "start" if i == 0 else "end" if i == self.n - 1 else "word"
            rows.append({"index": i, "token_id": tid, "token": word, "kind": kind})
        return rows

    def format(self) -> str:
        lines = [f"{'index':>5}  {'token':<20} kind", f"{'-' * 5}  {'-' * 20} ----"]
        for row in self.as_rows():
            lines.append(f"{row['index']:>5}  {row['token']:<20} {row['kind']}")
        if self.pad == "<|endoftext|>":
            lines.append(f"{self.n - 1}..{MAX_LENGTH - 1}: end token and padding (the EOT embeddings SWR edits)")
        else:
            lines.append(f"{self.n - 1}..{MAX_LENGTH - 1}: end token, then {self.pad!r} padding (the EOT embeddings "
                         "SWR edits)")
        return "\n".join(lines)


def token_table(tokenizer: Tokenizer, prompt: str) -> TokenTable:
    if not prompt or not prompt.strip():
        raise SuppressEOTError("the prompt is empty: give the text that describes the image")
    ids = tokenizer.encode(prompt)
    if len(ids) > MAX_LENGTH:
        raise SuppressEOTError(
            f"the prompt has {len(ids) - 2} tokens but CLIP takes at most {MAX_LENGTH - 2}: shorten the prompt")
    return TokenTable(prompt=prompt, ids=ids, words=[tokenizer.decode_token(i) for i in ids],
                      pad=str(tokenizer.hf.pad_token))


def find_phrase(tokenizer: Tokenizer, table: TokenTable, phrase: str) -> list[int]:
    """Indices of every occurrence of ``phrase``'s tokens in the prompt (e.g. "a beard" -> [4, 5])."""
    target = tokenizer.encode_words(phrase)
    if not target:
        raise SuppressEOTError(f"the word {phrase!r} has no tokens: give a word of the prompt")
    found: list[int] = []
    ids = table.ids
    for start in range(1, table.n - 1 - len(target) + 1):
        if ids[start:start + len(target)] == target:
            found.extend(range(start, start + len(target)))
    if not found:
        words = ", ".join(f"{i}:{table.words[i]}" for i in table.word_indices)
        raise SuppressEOTError(
            f"{phrase!r} is not in the prompt's tokens ({words}); use one of these words or --suppress-tokens")
    return found


def validate_group(table: TokenTable, group: list[int]) -> list[int]:
    """Check one group of token indices against the prompt; returns it sorted, without repeats."""
    if not group:
        raise SuppressEOTError("an empty token group: name at least one token index to suppress")
    last = table.n - 2
    for index in group:
        if isinstance(index, bool) or not isinstance(index, int):
            raise SuppressEOTError(f"token index {index!r} is not a whole number; {TOKENS_HINT}")
        if index == 0:
            raise SuppressEOTError(
                f"token index 0 is the start token <|startoftext|>, which cannot be suppressed; "
                f"the prompt's words are at 1..{last} ({TOKENS_HINT})")
        if index < 0 or index > MAX_LENGTH - 1:
            raise SuppressEOTError(f"token index {index} is outside 1..{last}; {TOKENS_HINT}")
        if index > last:
            raise SuppressEOTError(
                f"token index {index} is past the prompt's last word (index {last}, "
                f"{table.words[last]!r}); indices {last + 1}..76 are the end token and padding; {TOKENS_HINT}")
    return sorted(set(group))


def resolve_groups(tokenizer: Tokenizer, table: TokenTable, groups) -> list[list[int]]:
    """Turn user groups (ints, lists of ints, words/phrases) into validated index groups."""
    if isinstance(groups, (int, str)):
        groups = [groups]
    resolved = []
    for group in groups:
        if isinstance(group, str):
            indices = find_phrase(tokenizer, table, group)
        elif isinstance(group, int) and not isinstance(group, bool):
            indices = [group]
        else:
            indices = []
            for item in group:
                indices.extend(find_phrase(tokenizer, table, item) if isinstance(item, str) else [item])
        resolved.append(validate_group(table, indices))
    if not resolved:
        raise SuppressEOTError(f"nothing to suppress: name token indices or words; {TOKENS_HINT}")
    return resolved


def split_prompt(prompt: str, tokens: list[dict], indices: list[int]) -> tuple[str, str]:
    """(the prompt without the words of tokens ``indices``, those words), in the prompt's own spelling.

    ``"A dog in Van Gogh Style"`` with tokens 4,5,6 -> ``("A dog in", "Van Gogh Style")``. Each token's
    text is found in order in the lower-cased prompt (the CLIP tokenizer lower-cases); a sub-word
    token takes its whole word with it. If the tokens cannot be aligned (unusual unicode), the kept
    prompt is the remaining token texts joined by spaces.
    """
    drop = set(indices)
    words = [(int(row["index"]), str(row["token"])) for row in tokens
             if row.get("kind", "word") == "word" and str(row.get("token", "")).strip()]
    lower, cursor, removed = prompt.lower(), 0, [False] * len(prompt)
    for index, text in words:
        start = lower.find(text.lower(), cursor)
        if start < 0:
            kept = " ".join(t for i, t in words if i not in drop)
            return kept, " ".join(t for i, t in words if i in drop)
        end = cursor = start + len(text)
        if index in drop:
            while start > 0 and prompt[start - 1].isalnum():
                start -= 1
            while end < len(prompt) and prompt[end].isalnum():
                end += 1
            removed[start:end] = [True] * (end - start)

    def tidy(chars) -> str:
        text = re.sub(r"\s+", " ", "".join(chars)).strip()
        return re.sub(r"\s+([,.;:!?])", r"\1", text).strip(" ,;:")

    kept = tidy(c if not r else " " for c, r in zip(prompt, removed))
    gone = tidy(c if r else " " for c, r in zip(prompt, removed))
    return kept, gone
