"""The text for a language model of the synthetic corpus (every WordNet sentence but those
scored, and WordNet's definitions), and a lexicon for the beam search.

    .venv/bin/python recipes/synthetic/lm_text.py --data data/synthetic --out data/synthetic/lm.txt --lexicon data/synthetic/lexicon.txt [--glosses] [--wordnet-words] [--inflections]
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
the model hears (6 % of the `test` words). WordNet lists lemmas and irregular forms only;
`--inflections` adds the regular plurals, possessives and verb forms (265,000 words), which
leaves 0.27 % of the `test` words out of the lexicon instead of 1.10 %.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from make_corpus import WORDNET, gloss_definitions, read_sentences, wordnet_glosses

from wav2vec2.manifest import read_manifest
from wav2vec2.vocab import normalize_text

HELD_OUT = ("dev.tsv", "test.tsv", "test_voices.tsv")
PARTS = ("noun", "verb", "adj", "adv")


def spelled(words: set[str]) -> set[str]:
    """One-word entries of WordNet spelled as transcripts are (its lemmas join words with "_")."""
    normalised = (normalize_text(word) for word in words if "_" not in word)
    return {word for word in normalised if re.fullmatch(r"[A-Z][A-Z']*", word)}


def wordnet_lemmas(part: str) -> set[str]:
    """The one-word lemmas of one part of speech (index.noun and so on)."""
    lines = (WORDNET / f"index.{part}").read_text(encoding="latin-1").splitlines()
    return spelled({line.split()[0] for line in lines if not line.startswith(" ")})  # " ": the licence


def irregular_forms(part: str) -> dict[str, set[str]]:
    """The irregular forms of a part of speech's lemmas (noun.exc and so on: GEESE of GOOSE)."""
    forms = {}
    for line in (WORDNET / f"{part}.exc").read_text(encoding="latin-1").splitlines():
        form, *lemmas = line.split()
        for lemma in spelled(set(lemmas)):
            forms.setdefault(lemma, set()).update(spelled({form}))
    return forms


def wordnet_words() -> set[str]:
    """WordNet's one-word lemmas (index.*) and irregular forms (*.exc), spelled as transcripts are."""
    words = set()
    for part in PARTS:
        words |= wordnet_lemmas(part)
        words = words.union(*irregular_forms(part).values())
    return words


def add_s(word: str) -> str:
    """The plural of a noun, or the third person of a verb, by the regular rule."""
    if re.search(r"(S|X|Z|CH|SH)$", word):
        return word + "ES"
    return word[:-1] + "IES" if re.search(r"[^AEIOU]Y$", word) else word + "S"


def add_ed(word: str) -> str:
    if word.endswith("E"):
        return word + "D"
    return word[:-1] + "IED" if re.search(r"[^AEIOU]Y$", word) else word + "ED"


def add_ing(word: str) -> str:
    if word.endswith("IE"):
        return word[:-2] + "YING"
    return word[:-1] + "ING" if re.search(r"[^EYO]E$", word) else word + "ING"


def regular_inflections() -> set[str]:
    """The regular forms WordNet leaves out (it lists lemmas, and only the irregular forms):
    nouns' plurals and possessives, verbs' -s, -ed and -ing forms. A verb's -ed and -ing forms
    come from verb.exc where it has them (RAN, not RUNED; STOPPED, not STOPED), but every noun
    gets its regular plural: noun.exc's plurals are often one of two in use (BANDITTI and
    BANDITS). A rule applied where it does not hold makes a word that no one says, which costs
    the search little."""
    forms = set()
    for noun in wordnet_lemmas("noun"):
        forms |= {noun + "'S", add_s(noun), add_s(noun) + "'"}
    irregular_verbs = irregular_forms("verb")
    for verb in wordnet_lemmas("verb"):
        irregular = irregular_verbs.get(verb, set())
        forms.add(add_s(verb))
        if not irregular:
            forms.add(add_ed(verb))
        if not any(form.endswith("ING") for form in irregular):
            forms.add(add_ing(verb))
    return forms


def wordnet_definitions() -> list[str]:
    """WordNet's definitions of at least two words, spelled as transcripts, without the quoted
    examples and parenthesised remarks (a gloss holds several definitions, separated by semicolons)."""
    definitions = set()
    for gloss in wordnet_glosses():
        for definition in gloss_definitions(gloss):
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
    parser.add_argument("--inflections", action="store_true",
                        help="add the regular plurals, possessives and verb forms of WordNet's lemmas to the lexicon")
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
        if args.inflections:
            words |= regular_inflections()
        args.lexicon.write_text("".join(word + "\n" for word in sorted(words)))
        print(f"{args.lexicon}: {len(words)} words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
