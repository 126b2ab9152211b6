"""The text for a language model of the synthetic corpus (every WordNet sentence but those
scored, and WordNet's definitions), and a lexicon for the beam search.

    .venv/bin/python recipes/synthetic/lm_text.py --data data/synthetic --out data/synthetic/lm.txt --lexicon data/synthetic/lexicon.txt [--glosses] [--wordnet-words]
    .venv/bin/wav2vec2 lm build --text data/synthetic/lm.txt --order 4 --model demo --out data/synthetic/lm.arpa

The sentences are those make_corpus.py draws from (one transcript per line); the transcripts of
`dev.tsv`, `test.tsv` and `test_voices.tsv` are left out, so that an LM built from this text has
never seen a sentence it is tuned or scored on (an LM that knows the dev sentences by heart would
be tuned to trust itself far too much).

With `--glosses` the text also holds WordNet's definitions (the glosses the example sentences
are quoted from, 128,000 of them, 1.07 M words against the examples' 0.23 M): text from the same
source and of the same vocabulary, though not of the same kind (noun phrases more than
sentences). Tuned on dev, they cut the demo model's `test` WER with the LM from 17.5 to 14.8 %
(RESULTS.md, stage 10).

The lexicon holds the words of that text, and with `--wordnet-words` also WordNet's dictionary
of English: every one-word lemma and every irregular form of its exception lists (90,000 words
against 26,000). A word the LM text lacks costs P(<unk>) in the search, but can be written at
all: without it, a word of a scored sentence that no other sentence uses is an error whatever
the model hears (6 % of the `test` words).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from make_corpus import WORDNET, read_sentences, wordnet_glosses

from wav2vec2.manifest import read_manifest
from wav2vec2.vocab import normalize_text

HELD_OUT = ("dev.tsv", "test.tsv", "test_voices.tsv")
PARTS = ("noun", "verb", "adj", "adv")


def wordnet_words() -> set[str]:
    """WordNet's one-word lemmas (index.*) and irregular forms (*.exc), spelled as transcripts are."""
    words = set()
    for part in PARTS:
        for name in (f"index.{part}", f"{part}.exc"):
            for line in (WORDNET / name).read_text(encoding="latin-1").splitlines():
                if not line.startswith(" "):  # the licence at the top of each index
                    words.add(line.split()[0])
    spelled = (normalize_text(word) for word in words if "_" not in word)
    return {word for word in spelled if re.fullmatch(r"[A-Z][A-Z']*", word)}


def wordnet_definitions() -> list[str]:
    """WordNet's definitions of at least two words, spelled as transcripts, without the quoted
    examples and parenthesised remarks (a gloss holds several definitions, separated by semicolons)."""
    definitions = set()
    for gloss in wordnet_glosses():
        for definition in re.sub(r"\([^)]*\)", " ", re.sub(r'"[^"]*"', ";", gloss)).split(";"):
            text = normalize_text(definition)
            if len(text.split()) >= 2 and re.fullmatch(r"[A-Z][A-Z']*( [A-Z][A-Z']*)*", text):
                definitions.add(text)
    return sorted(definitions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the corpus folder of make_corpus.py")
    parser.add_argument("--out", type=Path, required=True, help="the text file to write")
    parser.add_argument("--lexicon", type=Path, help="also write the words of the text, one per line, to this file")
    parser.add_argument("--glosses", action="store_true", help="add WordNet's definitions to the text")
    parser.add_argument("--wordnet-words", action="store_true",
                        help="add WordNet's one-word lemmas and irregular forms to the lexicon")
    args = parser.parse_args()
    held_out = {entry.text for name in HELD_OUT for entry in read_manifest(args.data / name)}
    kept = [s.transcript for s in read_sentences() if s.transcript not in held_out]
    glosses = [text for text in wordnet_definitions() if text not in held_out] if args.glosses else []
    args.out.write_text("".join(line + "\n" for line in kept + glosses))
    print(f"{args.out}: {len(kept)} sentences and {len(glosses)} definitions "
          f"({len(held_out)} dev and test transcripts left out)")
    if args.lexicon:
        words = {word for line in kept + glosses for word in line.split()}
        if args.wordnet_words:
            words |= wordnet_words()
        args.lexicon.write_text("".join(word + "\n" for word in sorted(words)))
        print(f"{args.lexicon}: {len(words)} words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
