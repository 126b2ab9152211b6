"""Word n-gram language models for CTC beam search: read from ARPA files, or estimated from text.

A decoder extends its hypotheses one word at a time, so a model scores one word from a state (the
last few words) and returns the next state. ARPA text (plain or gzip) is read by our own reader
into dicts; KenLM binary files go through the optional `kenlm` module. `estimate` builds an
interpolated modified Kneser-Ney model (Chen & Goodman 1998) the way KenLM's lmplz does, for
corpora that fit in memory (a few million words); `write_arpa` saves it for any decoder to read.
"""

from __future__ import annotations

import gzip
import math
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn, Protocol

from .errors import LanguageModelError
from .vocab import SPECIAL_TOKENS, Vocabulary, normalize_text

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)
UNKNOWN_LOG10 = -100.0  # P(<unk>) for a file without a <unk> entry, as KenLM
NEVER_LOG10 = -99.0  # written for <s>, which is never predicted (SRILM's convention)
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # D1, D2, D3+ when the counts cannot give them (lmplz's fallback)
KENLM_MAGIC = b"mmap lm "  # the first bytes of a KenLM binary file
# The characters of facebook/wav2vec2-base-960h: the text `lm build` writes without --model.
ENGLISH = Vocabulary(tokens=[*SPECIAL_TOKENS, *"'ABCDEFGHIJKLMNOPQRSTUVWXYZ"])

LMState = tuple  # hashable; equal states score every continuation equally


class LanguageModel(Protocol):
    order: int

    def begin(self) -> LMState: ...  # the state after <s>

    def score(self, state: LMState, word: str) -> tuple[float, LMState]: ...  # ln P(word | state), next state

    def finish(self, state: LMState) -> float: ...  # ln P(</s> | state)

    def __contains__(self, word: str) -> bool: ...


class NGramModel:
    """A back-off n-gram model: ln P of every n-gram and ln back-off weight of every context.

    The keys are tuples of words. A state is the longest suffix of the history (at most order-1
    words) that is a context of the model (an n-gram with extensions or a back-off weight): the
    words before it cannot change any score, and dropping them merges hypotheses, as in KenLM.
    """

    def __init__(self, order: int, logp: dict[tuple[str, ...], float], backoff: dict[tuple[str, ...], float]):
        self.order = order
        self.logp = logp
        self.backoff = backoff
        self.vocabulary = {gram[0] for gram in logp if len(gram) == 1}
        logp.setdefault((UNK,), UNKNOWN_LOG10 * LN10)
        for gram in logp:  # every prefix of an n-gram is a context, even with a zero weight
            if len(gram) > 1:
                backoff.setdefault(gram[:-1], 0.0)
        self._begin = (BOS,) if (BOS,) in backoff else ()

    def begin(self) -> LMState:
        return self._begin

    def score(self, state: LMState, word: str) -> tuple[float, LMState]:
        if word not in self.vocabulary:
            word = UNK
        logp, backoff = self.logp, self.backoff
        total = 0.0
        for start in range(len(state) + 1):  # the longest known n-gram, paying back-off weights on the way
            context = state[start:]
            p = logp.get(context + (word,))
            if p is not None:
                total += p
                break
            total += backoff.get(context, 0.0)
        if self.order == 1:
            return total, ()
        following = (state + (word,))[1 - self.order:]
        while following and following not in backoff:
            following = following[1:]
        return total, following

    def finish(self, state: LMState) -> float:
        return self.score(state, EOS)[0]

    def __contains__(self, word: str) -> bool:
        return word in self.vocabulary

    def sizes(self) -> list[int]:
        """The number of n-grams of each order."""
        sizes = [0] * self.order
        for gram in self.logp:
            sizes[len(gram) - 1] += 1
        return sizes


class KenLMModel:
    """A model read by the `kenlm` module (KenLM binary files; ARPA works too); a state is (kenlm.State,)."""

    def __init__(self, path: str | os.PathLike):
        try:
            import kenlm
        except ImportError:
            raise LanguageModelError(f"{path}: a KenLM binary model needs the kenlm module (pip install kenlm), "
                                     "or use the model's ARPA file") from None
        try:
            self.model = kenlm.Model(str(path))
        except Exception as error:  # kenlm raises OSError or RuntimeError with KenLM's message
            raise LanguageModelError(f"{path}: KenLM cannot read it ({str(error).strip()})") from None
        self._new_state = kenlm.State
        self.order = self.model.order

    def begin(self) -> LMState:
        state = self._new_state()
        self.model.BeginSentenceWrite(state)
        return (state,)

    def score(self, state: LMState, word: str) -> tuple[float, LMState]:
        following = self._new_state()
        return self.model.BaseScore(state[0], word, following) * LN10, (following,)

    def finish(self, state: LMState) -> float:
        return self.score(state, EOS)[0]

    def __contains__(self, word: str) -> bool:
        return word in self.model


def load_lm(path: str | os.PathLike) -> LanguageModel:
    """An ARPA file (plain or gzip) through our reader, or a KenLM binary file through `kenlm`."""
    path = Path(path)
    if not path.is_file():
        raise LanguageModelError(f"{path}: no such language model file")
    with open(path, "rb") as file:
        head = file.read(len(KENLM_MAGIC))
    if head == KENLM_MAGIC:
        return KenLMModel(path)
    opener = gzip.open if head[:2] == b"\x1f\x8b" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            return _read_arpa(lines, path)
    except (UnicodeDecodeError, EOFError, OSError) as error:  # a binary file, a broken gzip stream
        raise LanguageModelError(f"{path}: not a readable ARPA file ({error})") from None


def _read_arpa(lines: Iterable[str], path: Path) -> NGramModel:
    number = 0

    def fail(why: str) -> NoReturn:
        raise LanguageModelError(f"{path}, line {number}: {why}")

    for number, line in enumerate(lines, 1):  # anything before \data\ is ignored, as by SRILM
        if line.strip() == "\\data\\":
            break
    else:
        raise LanguageModelError(f"{path}: not an ARPA file (no \\data\\ line)")
    expected: dict[int, int] = {}
    for number, line in enumerate(lines, number + 1):
        line = line.strip()
        if line.startswith("ngram "):
            n, _, count = line[6:].partition("=")
            if not (n.strip().isdigit() and count.strip().isdigit()):
                fail(f"expected 'ngram N=COUNT', found {line[:60]!r}")
            expected[int(n)] = int(count)
        elif line == "\\1-grams:":
            break
        elif line:
            fail(f"expected 'ngram N=COUNT' or \\1-grams:, found {line[:60]!r}")
    else:
        fail("the file ends before the \\1-grams: section")
    order = len(expected)
    if sorted(expected) != list(range(1, order + 1)):
        fail("the \\data\\ header must give the number of n-grams of every order from 1 up")
    logp: dict[tuple[str, ...], float] = {}
    backoff: dict[tuple[str, ...], float] = {}
    intern = sys.intern
    n, found = 1, 0
    for number, line in enumerate(lines, number + 1):
        parts = line.split()
        if len(parts) == 1 and parts[0].startswith("\\"):
            if found != expected[n]:
                fail(f"{found} {n}-grams, but the \\data\\ header says {expected[n]}")
            if parts[0] == "\\end\\" and n == order:
                return NGramModel(order, logp, backoff)
            following = "\\end\\" if n == order else f"\\{n + 1}-grams:"
            if parts[0] != following:
                fail(f"expected {following}, found {parts[0]!r}")
            n, found = n + 1, 0
        elif parts:
            if len(parts) not in (n + 1, n + 2):
                fail(f"expected a log10 probability, {n} word{'s' * (n > 1)} and an optional back-off weight")
            try:
                p, b = float(parts[0]), float(parts[n + 1]) if len(parts) == n + 2 else 0.0
            except ValueError:
                fail(f"not a number in {line.strip()[:60]!r}")
            if not p <= 0.0:
                fail(f"a log10 probability must not be positive: {parts[0]}")
            gram = tuple(map(intern, parts[1:n + 1]))
            logp[gram] = p * LN10
            if b:
                backoff[gram] = b * LN10
            found += 1
    fail("the file ends before \\end\\ (truncated?)")


def write_arpa(model: NGramModel, path: str | os.PathLike) -> None:
    """The model as an ARPA file (gzip-compressed if the name ends in .gz)."""
    by_order: list[list[tuple[str, ...]]] = [[] for _ in range(model.order)]
    for gram in model.logp:
        by_order[len(gram) - 1].append(gram)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as file:
        file.write("\\data\\\n" + "".join(f"ngram {n}={len(g)}\n" for n, g in enumerate(by_order, 1)))
        for n, grams in enumerate(by_order, 1):
            file.write(f"\n\\{n}-grams:\n")
            for gram in grams:
                line = f"{model.logp[gram] / LN10:.7g}\t{' '.join(gram)}"
                weight = model.backoff.get(gram) if n < model.order else None
                file.write(line + ("\n" if weight is None else f"\t{weight / LN10:.7g}\n"))
        file.write("\n\\end\\\n")


def kneser_ney_discounts(adjusted: Iterable[int]) -> tuple[float, float, float]:
    """D1, D2, D3+ from the counts of counts t1..t4 (Chen & Goodman, eq. 26); the fallback when a
    t is zero or a discount falls outside (0, k], which tiny or artificial corpora produce."""
    t = Counter(c for c in adjusted if 0 < c <= 4)
    try:
        y = t[1] / (t[1] + 2 * t[2])
        discounts = tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3))
    except ZeroDivisionError:
        return FALLBACK_DISCOUNTS
    return discounts if all(0.0 < d <= k for k, d in enumerate(discounts, 1)) else FALLBACK_DISCOUNTS


def estimate(sentences: Iterable[str | Sequence[str]], order: int = 3, min_count: Sequence[int] = (),
             max_vocab: int | None = None) -> NGramModel:
    """Interpolated modified Kneser-Ney, with lmplz's conventions.

    Each sentence is `<s> words </s>`. The highest order and n-grams starting with <s> keep their
    counts; lower orders count distinct left neighbours (continuation counts). Each order has
    three discounts from its counts of counts; each unigram is interpolated with the uniform
    distribution over the vocabulary (every word but <s>, with </s> and <unk>). A context's
    interpolation weight is its ARPA back-off weight, so back-off scoring gives the interpolated
    probabilities exactly. `min_count` (one per order from bigrams up, the last repeating, never
    decreasing) drops n-grams seen fewer times; the back-off weights are then recomputed so that
    every distribution still sums to 1. `max_vocab` keeps the most frequent words, the rest
    becoming <unk>.
    """
    if order < 1:
        raise ValueError(f"the order must be at least 1, not {order}")
    thresholds = [1, *min_count, *[min_count[-1] if min_count else 1] * order][:order]
    if any(c < 1 for c in thresholds) or thresholds != sorted(thresholds):
        raise ValueError(f"minimum counts must be at least 1 and never decrease with the order: {list(min_count)}")
    corpus = [words for words in (s.split() if isinstance(s, str) else tuple(s) for s in sentences) if words]
    if not corpus:
        raise LanguageModelError("no sentences to estimate a language model from")
    if max_vocab is not None:
        frequency = Counter(word for words in corpus for word in words)
        kept = {word for word, _ in sorted(frequency.items(), key=lambda item: (-item[1], item[0]))[:max_vocab]}
        corpus = [[word if word in kept else UNK for word in words] for words in corpus]
    counts: list[Counter] = [Counter() for _ in range(order)]  # counts[n - 1][n-gram]: occurrences
    for words in corpus:
        sequence = (BOS, *words, EOS)
        for n, table in enumerate(counts, 1):
            table.update(zip(*(sequence[k:] for k in range(n))))
    if counts[0][(BOS,)] != len(corpus) or counts[0][(EOS,)] != len(corpus):
        raise LanguageModelError(f"the sentences must not contain {BOS} or {EOS} as words")

    adjusted: list[dict[tuple[str, ...], int]] = []
    for n in range(1, order + 1):
        if n == order:
            table = dict(counts[n - 1])
        else:
            table = Counter(gram[1:] for gram in counts[n])  # distinct words before each n-gram
            table.update({gram: c for gram, c in counts[n - 1].items() if gram[0] == BOS})
        adjusted.append(table)
    del adjusted[0][(BOS,)]  # never predicted
    adjusted[0].setdefault((UNK,), 0)
    vocabulary_size = len(adjusted[0])

    prob: dict[tuple[str, ...], float] = {}
    gammas: dict[tuple[str, ...], float] = {}
    for n, table in enumerate(adjusted, 1):
        discount = (0.0, *kneser_ney_discounts(table.values()))
        stats: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # sum, N1, N2, N3+
        for gram, c in table.items():
            context = stats[gram[:-1]]
            context[0] += c
            if c:
                context[min(c, 3)] += 1
        gamma = {context: (discount[1] * s[1] + discount[2] * s[2] + discount[3] * s[3]) / s[0]
                 for context, s in stats.items()}
        for gram, c in table.items():
            lower = prob[gram[1:]] if n > 1 else 1.0 / vocabulary_size
            prob[gram] = (c - discount[min(c, 3)]) / stats[gram[:-1]][0] + gamma[gram[:-1]] * lower
        if n > 1:
            gammas.update(gamma)

    kept = [gram for gram in prob if len(gram) == 1 or counts[len(gram) - 1][gram] >= thresholds[len(gram) - 1]]
    if any(c > 1 for c in thresholds):  # renormalise: the pruned words' mass goes to the shorter context
        free: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [1.0, 1.0])
        for gram in kept:
            if len(gram) > 1:
                mass = free[gram[:-1]]
                mass[0] -= prob[gram]
                mass[1] -= prob[gram[1:]]
        gammas = {context: max(left, 1e-12) / max(lower, 1e-12) for context, (left, lower) in free.items()}
    logp = {gram: math.log(prob[gram]) for gram in kept}
    logp[(BOS,)] = NEVER_LOG10 * LN10
    backoff = {context: math.log(g) for context, g in gammas.items() if context in logp}
    return NGramModel(order, logp, backoff)


def read_sentences(paths: Iterable[str | os.PathLike], vocab: Vocabulary | None = None) -> tuple[list[str], int]:
    """The lines of text files, normalised to a CTC vocabulary's spelling (`ENGLISH` without one),
    and the number of lines dropped because they hold characters the vocabulary cannot spell."""
    vocab = vocab or ENGLISH
    sentences, dropped = [], 0
    for path in paths:
        try:
            with open(path, encoding="utf-8") as file:
                for line in file:
                    text = normalize_text(line, vocab)
                    if text and vocab.unknown_characters(text):
                        dropped += 1
                    elif text:
                        sentences.append(text)
        except (OSError, UnicodeDecodeError) as error:
            raise text_file_error(path, "text", error) from None
    return sentences, dropped


def text_file_error(path: str | os.PathLike, kind: str, error: OSError | UnicodeDecodeError) -> LanguageModelError:
    """The one-line error for a text file (of `kind`: "text", "lexicon") that could not be read."""
    if isinstance(error, FileNotFoundError):
        return LanguageModelError(f"{path}: no such {kind} file")
    if isinstance(error, UnicodeDecodeError):
        return LanguageModelError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})")
    return LanguageModelError(f"{path}: {error.strerror or error}")
