"""Characters <-> ids: the CTC vocabulary of a checkpoint (`vocab.json`, `tokenizer_config.json`).

The pad token doubles as the CTC blank and `|` marks the boundary between words, as in every
wav2vec 2.0 character checkpoint.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, DataError


@dataclass
class Vocabulary:
    tokens: list[str]  # id -> token
    blank: int = 0  # id of the pad token, the CTC blank
    word_delimiter: str = "|"
    unk_token: str = "<unk>"
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    do_lower_case: bool = False

    @property
    def pad_token(self) -> str:
        return self.tokens[self.blank]

    @property
    def ids(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def token(self, token_id: int) -> str:
        return self.tokens[token_id] if 0 <= token_id < len(self.tokens) else self.unk_token

    def unknown_characters(self, text: str) -> set[str]:
        """The characters of `text` that have no id, for callers to count and report (a space stands for `|`)."""
        ids = self.ids
        return {c for c in set(text.replace(" ", self.word_delimiter)) if c not in ids}

    def encode(self, text: str, allow_unknown: bool = False) -> list[int]:
        """Text (normalised with normalize_text) -> ids, one per character, a space becoming `|`.

        A character outside the vocabulary raises DataError, so that transcripts are never
        silently changed; with allow_unknown it becomes the unk token, as in transformers.
        """
        ids = self.ids
        unknown = self.unknown_characters(text)
        if unknown and not (allow_unknown and self.unk_token in ids):
            raise DataError(f"characters outside the vocabulary: {' '.join(repr(c) for c in sorted(unknown))}")
        return [ids[c] if c in ids else ids[self.unk_token] for c in text.replace(" ", self.word_delimiter)]

    @classmethod
    def from_folder(cls, folder: Path) -> Vocabulary:
        path = folder / "vocab.json"
        if not path.is_file():
            raise CheckpointError(f"{folder}: no vocab.json (a CTC checkpoint needs its character vocabulary)")
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise CheckpointError(f"{path}: expected a flat {{token: id}} mapping "
                                  "(multilingual vocabularies with one table per language are not supported)")
        settings = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (folder / name).is_file():
                settings.update(json.loads((folder / name).read_text(encoding="utf-8")))
        tokens = [""] * (max(mapping.values()) + 1)
        for token, index in mapping.items():
            tokens[index] = token
        pad = _token_text(settings.get("pad_token", "<pad>"))
        blank = mapping.get(pad, 0)
        return cls(
            tokens=tokens,
            blank=blank,
            word_delimiter=settings.get("word_delimiter_token", "|"),
            unk_token=_token_text(settings.get("unk_token", "<unk>")),
            bos_token=_token_text(settings.get("bos_token", "<s>")),
            eos_token=_token_text(settings.get("eos_token", "</s>")),
            do_lower_case=bool(settings.get("do_lower_case", False)),
        )

    def files(self) -> dict[str, str]:
        """The files of this vocabulary as {file name: text}, in the Hugging Face layout."""
        tokenizer_config = {
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "word_delimiter_token": self.word_delimiter,
            "replace_word_delimiter_char": " ",
            "do_lower_case": self.do_lower_case,
        }
        return {
            "vocab.json": json.dumps(self.ids, ensure_ascii=False, indent=2),
            "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
        }


def _token_text(value) -> str:
    """special_tokens_map.json stores tokens as strings or as {"content": ...} objects."""
    return value["content"] if isinstance(value, dict) else str(value)


SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "|")  # ids 0-4, as in facebook/wav2vec2-base-960h
APOSTROPHES = "'\u2019\u2018\u02bc"  # ' and the typographic ones, all written as '


def normalize_text(text: str, vocab: Vocabulary | None = None) -> str:
    """Text as the checkpoint spells it, so that references and hypotheses compare fairly.

    Letters take the case of the vocabulary's letters (upper-case for the English checkpoints;
    unchanged if the vocabulary mixes cases); apostrophes are kept (typographic ones become ');
    other punctuation becomes a space unless the vocabulary has it; the vocabulary's special
    tokens (<s>, </s>, ...) are dropped; whitespace is collapsed. Any other character is kept, so
    that `Vocabulary.unknown_characters` can report it. Without a vocabulary: upper-case, and
    all punctuation but apostrophes becomes a space (the text `build_vocabulary` reads).
    """
    text = unicodedata.normalize("NFC", text)
    if vocab is None:
        keep, delimiter, upper, lower = {"'"}, "|", True, False
    else:
        for special in (vocab.pad_token, vocab.bos_token, vocab.eos_token, vocab.unk_token):
            if special:
                text = text.replace(special, "")
        keep = {token for token in vocab.tokens if len(token) == 1}
        delimiter = vocab.word_delimiter
        letters = [token for token in keep if token.isalpha() and token.lower() != token.upper()]
        upper = bool(letters) and all(token.isupper() for token in letters)
        lower = bool(letters) and all(token.islower() for token in letters)
    text = text.replace(delimiter, " ")
    if upper:
        text = text.upper()
    elif lower:
        text = text.lower()
    characters = []
    for c in text:
        if c in keep:
            characters.append(c)
        elif c in APOSTROPHES:
            characters.append("'" if "'" in keep else "")
        elif c.isspace() or unicodedata.category(c).startswith("P"):
            characters.append(" ")
        else:
            characters.append(c)
    return " ".join("".join(characters).split())


def build_vocabulary(texts: Iterable[str]) -> Vocabulary:
    """A character vocabulary for these transcripts, in the layout of facebook/wav2vec2-base-960h.

    <pad> (0, the CTC blank), <s>, </s>, <unk>, | (the word delimiter), then every character of
    the normalised transcripts in code-point order (base-960h orders them by frequency instead;
    a sorted order depends only on which characters occur, not on how often).
    """
    characters: set[str] = set()
    for text in texts:
        characters.update(normalize_text(text))
    characters.discard(" ")
    if not characters:
        raise DataError("the transcripts hold no characters to build a vocabulary from")
    return Vocabulary(tokens=list(SPECIAL_TOKENS) + sorted(characters), blank=0)
