"""Characters <-> ids: the CTC vocabulary of a checkpoint (`vocab.json`, `tokenizer_config.json`).

The pad token doubles as the CTC blank and `|` marks the boundary between words, as in every
wav2vec 2.0 character checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError


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

    def save(self, folder: Path) -> dict[str, str]:
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
