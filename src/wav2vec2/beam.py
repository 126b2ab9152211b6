"""CTC prefix beam search with a word n-gram language model, a lexicon and hotwords.

Greedy decoding takes each frame's best token. Beam search keeps the `beam_size` most likely
texts so far, each scored by the sum over all its frame alignments (CTC prefix search), plus,
each time a word completes, `lm_weight * ln P(word | previous words) + word_score` and the boost
of a hotword. A lexicon restricts the words to a list, and lets a word in progress count the best
LM score of the words it can still become (look-ahead, replaced by the real score when the word
completes); without one any spelling is a word and the LM scores the words it does not know as
`<unk>`. Hotwords are a trie: a beam's current word is one position in it, so a few hundred
hotwords cost no more than one. While the word is a prefix of a hotword it earns a share of the
boost per character, the full boost once it completes, and loses the share if it leaves the trie.

How it keeps up with the model in numpy and Python (0.2-0.5 ms per 20 ms frame at beam 100):
* CTC posteriors are peaky: only tokens within `token_threshold` of a frame's best are tried,
  and a frame where that leaves only the blank is one vector update of the beams.
* Prefixes are numbered nodes of a tree; the beams are numpy arrays of node ids and scores, and
  a frame is a few array operations. A child node is made once, the first time a prefix is
  extended by a token (letters together, in numpy; the tries are sorted arrays), and then read
  from a table. Python runs per node only where a word completes: the LM is asked there, with
  its scores cached per state and word.
* Only the extensions that can be among the `beam_size` best are made at all.

Memory stays flat however long the input: `feed` takes chunks of frames as they come, the node
table is rebuilt from the live beams when it grows, and the characters that every beam agrees
on leave the search for the final text. Each beam keeps, for the path that dominates it, every
character's first and last frame and best probability, which time the words as greedy does.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .decoding import Decoded, words_from_characters
from .errors import DataError, LanguageModelError
from .lm import LanguageModel, LMState, load_lm, text_file_error
from .vocab import Vocabulary, normalize_text

NEG = -np.inf
DEFAULT_BOOST = 10.0  # nats added for a completed hotword without :BOOST
# A hotword the LM lacks would get P(<unk>), which is 1e-100 in an ARPA file without <unk>: floor it
# at a rare word's probability, so that the boost decides.
HOTWORD_LM_FLOOR = math.log(1e-8)
INVALID = -2  # a child the lexicon forbids (-1 in the child table: not made yet)
NODE_LIMIT = 20_000  # rebuild the node table from the live beams beyond this many nodes
RECORD_LIMIT = 20_000  # move the agreed characters out of the search beyond this many records
HORIZON = 500  # frames (10 s): beams that disagree with the best one before this are dropped then
CACHE_LIMIT = 100_000  # LM scores kept per decoder (about 25 MB)


@dataclasses.dataclass
class BeamSettings:
    """How the beam search decodes (scores in nats: natural logs)."""

    beam_size: int = 100  # texts kept after each frame
    lm: str | None = None  # word n-gram model: ARPA (plain or .gz) or KenLM binary
    lexicon: str | None = None  # the words allowed, one per line, each optionally followed by its spelling
    lm_weight: float = 0.5  # multiplies ln P(word | previous words)
    word_score: float | None = None  # added per word; None: 1.0 with an LM, 0 without (plain CTC)
    hotwords: tuple[str, ...] = ()  # "WORD" or "WORD:BOOST" (default boost DEFAULT_BOOST)
    token_threshold: float = 8.0  # try only tokens whose log-prob is within this of the frame's best
    beam_threshold: float = 25.0  # drop texts scoring this much below the best

    def validate(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"the beam size must be at least 1, not {self.beam_size}")
        if not self.token_threshold > 0 or not self.beam_threshold > 0:
            raise ValueError("token_threshold and beam_threshold must be positive")
        for hotword in self.hotwords:
            parse_hotword(hotword)


def parse_hotword(text: str) -> tuple[str, float]:
    """"WORD" or "WORD:BOOST" -> (WORD, boost); a boost is a number of nats, at least 0."""
    word, colon, boost = text.rpartition(":")
    if not colon:
        word, value = text, DEFAULT_BOOST
    else:
        try:
            value = float(boost)
        except ValueError:
            raise ValueError(f"hotword {text!r}: the boost after ':' must be a number") from None
    if not word.strip() or len(word.split()) != 1:
        raise ValueError(f"hotword {text!r}: give one word (WORD or WORD:BOOST)")
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"hotword {text!r}: the boost must be a finite number of at least 0")
    return word.strip(), value


def read_lexicon(path: str | os.PathLike) -> list[tuple[int, str, list[str]]]:
    """(line number, word, spelling) of each line of a lexicon file: `WORD` alone, or `WORD s p e l l`
    (flashlight's layout; a trailing `|` is allowed). Blank lines and `#` comments are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise text_file_error(path, "lexicon", error) from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            entries.append((number, fields[0], fields[1:]))
    if not entries:
        raise LanguageModelError(f"{path}: the lexicon holds no words")
    return entries


class _Trie:
    """Words as token-id sequences. Node 0 is the empty prefix; `value[node]` is NaN except where a word
    ends (its boost, for hotwords); `partial[node]` is the largest share of a boost earned on the way;
    `ahead[node]` the best LM score (ln P(word | <s>)) of the words below, to look ahead with.
    `freeze` turns the children into a sorted array of node * vocab + token, for vectorised steps."""

    def __init__(self, size: int):
        self.size = size
        self._children: list[dict[int, int]] = [{}]
        self._value: list[float] = [math.nan]
        self._partial: list[float] = [0.0]
        self._ahead: list[float] = [-math.inf]

    def add(self, ids: list[int], value: float = 0.0, ahead: float = 0.0) -> None:
        node = 0
        for depth, token in enumerate(ids, 1):
            child = self._children[node].get(token)
            if child is None:
                child = self._children[node][token] = len(self._children)
                self._children.append({})
                self._value.append(math.nan)
                self._partial.append(0.0)
                self._ahead.append(-math.inf)
            node = child
            self._partial[node] = max(self._partial[node], value * depth / len(ids))
            self._ahead[node] = max(self._ahead[node], ahead)
        self._value[node] = value if math.isnan(self._value[node]) else max(value, self._value[node])

    def freeze(self) -> _Trie:
        pairs = sorted((node * self.size + token, child) for node, children in enumerate(self._children)
                       for token, child in children.items())
        self.keys = np.array([k for k, _ in pairs], dtype=np.int64)
        self.targets = np.array([c for _, c in pairs], dtype=np.int64)
        self.value = np.array(self._value + [math.nan])  # value[-1]: off the trie
        self.partial = np.array(self._partial + [0.0])
        self.ahead = np.array(self._ahead + [0.0])
        return self

    def step(self, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The children of trie nodes by tokens; -1 where there is none (or the node is -1)."""
        keys = nodes * self.size + tokens
        found = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        ok = (nodes >= 0) & (self.keys[found] == keys) if len(self.keys) else np.zeros(len(keys), bool)
        return np.where(ok, self.targets[found] if len(self.keys) else -1, -1)


def _spell(word: str, vocab: Vocabulary) -> tuple[str, list[int]]:
    """A word as the vocabulary spells it (normalize_text) and its token ids; ValueError if it cannot."""
    text = normalize_text(word, vocab)
    if len(text.split()) != 1:
        raise ValueError(f"{word!r} is not one word in the model's spelling")
    try:
        return text, vocab.encode(text)
    except DataError:
        unknown = " ".join(sorted(vocab.unknown_characters(text)))
        raise ValueError(f"{word!r} has characters outside the model's vocabulary: {unknown}") from None


class BeamDecoder:
    """A vocabulary, a loaded LM, lexicon and hotwords: everything that does not change between
    recordings. `stream()` starts the search of one recording; `decode()` decodes one array."""

    def __init__(self, vocab: Vocabulary, settings: BeamSettings | None = None, lm: LanguageModel | None = None,
                 lexicon: Iterable[str] | list[tuple[int, str, list[str]]] | None = None):
        """`lm` and `lexicon` (words, or read_lexicon's entries) replace the files named in `settings`."""
        self.settings = settings = settings or BeamSettings()
        settings.validate()
        self.vocab = vocab
        if vocab.word_delimiter not in vocab.ids:
            raise ValueError(f"beam search needs the word delimiter {vocab.word_delimiter!r} in the vocabulary")
        self.delimiter = vocab.ids[vocab.word_delimiter]
        self.blank = vocab.blank
        self.lm = lm if lm is not None else load_lm(settings.lm) if settings.lm else None
        self.lm_weight = settings.lm_weight
        self.word_score = settings.word_score if settings.word_score is not None else (1.0 if self.lm else 0.0)

        self.hotwords: _Trie | None = None
        words = []
        if settings.hotwords:
            self.hotwords = _Trie(len(vocab))
            for hotword in settings.hotwords:
                word, boost = parse_hotword(hotword)
                try:
                    text, ids = _spell(word, vocab)
                except ValueError as error:
                    raise ValueError(f"hotword {error}") from None
                self.hotwords.add(ids, boost)
                words.append((text, ids))
            self.hotwords.freeze()
        self._oov_hotwords = {text for text, _ in words if self.lm is not None and text not in self.lm}
        self._cache: dict[tuple[LMState, str], tuple[float, LMState]] = {}

        if lexicon is None and settings.lexicon:
            lexicon = read_lexicon(settings.lexicon)
        self.lexicon: _Trie | None = None
        if lexicon is not None:
            self.lexicon = _Trie(len(vocab))
            source = settings.lexicon or "lexicon"
            for number, word, spelling in _lexicon_entries(lexicon):
                try:
                    text, ids = _spell(word, vocab)
                    if spelling and _spell("".join(t for t in spelling if t != vocab.word_delimiter),
                                           vocab)[0] != text:
                        raise ValueError(f"the spelling {' '.join(spelling)!r} does not spell {word!r}")
                except ValueError as error:
                    raise LanguageModelError(f"{source}, line {number}: {error}") from None
                self.lexicon.add(ids, ahead=self._prior(text))
            for text, ids in words:  # hotwords are always allowed
                self.lexicon.add(ids, ahead=self._prior(text))
            self.lexicon.freeze()

    def _prior(self, word: str) -> float:
        """ln P(word | <s>): what a word in progress may hope for from the LM (0 without an LM)."""
        return self.lm_score(self.lm.begin(), word)[0] if self.lm is not None else 0.0

    def lm_score(self, state: LMState, word: str) -> tuple[float, LMState]:
        """ln P(word | state) and the next state, cached."""
        key = (state, word)
        found = self._cache.get(key)
        if found is None:
            score, following = self.lm.score(state, word)
            if word in self._oov_hotwords:
                score = max(score, HOTWORD_LM_FLOOR)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            found = self._cache[key] = (score, following)
        return found

    def with_weights(self, lm_weight: float, word_score: float) -> BeamDecoder:
        """This decoder with another LM weight and word score, sharing the LM, tries and cache (for tuning)."""
        other = copy.copy(self)
        other.lm_weight, other.word_score = lm_weight, word_score
        other.settings = dataclasses.replace(self.settings, lm_weight=lm_weight, word_score=word_score)
        return other

    def stream(self, seconds_per_frame: float = 0.02, offset: float = 0.0) -> BeamSearch:
        """A search over one recording, fed chunk by chunk; `offset` (seconds) shifts its word times."""
        return BeamSearch(self, seconds_per_frame, offset)

    def decode(self, log_probs, seconds_per_frame: float = 0.02, offset: float = 0.0) -> Decoded:
        """Decode a whole (frames, vocab) array of log-probabilities at once."""
        search = self.stream(seconds_per_frame, offset)
        search.feed(log_probs)
        return search.finish()


def _lexicon_entries(lexicon) -> Iterable[tuple[int, str, list[str]]]:
    for number, entry in enumerate(lexicon, 1):
        yield entry if isinstance(entry, tuple) else (number, entry, [])


def as_decoder(decoder: BeamDecoder | BeamSettings | None, vocab: Vocabulary) -> BeamDecoder | None:
    """What the transcription functions accept: a decoder, settings to make one from, or None (greedy)."""
    if isinstance(decoder, BeamSettings):
        return BeamDecoder(vocab, decoder)
    return decoder


class BeamSearch:
    """The search over one recording: `feed` chunks of (frames, vocab) log-probabilities in order,
    then `finish` for the best text with word timings. After `finish`, `score` is that text's
    total: ln of its CTC probability plus the LM, word and hotword scores."""

    def __init__(self, decoder: BeamDecoder, seconds_per_frame: float = 0.02, offset: float = 0.0):
        self.decoder = d = decoder
        self.seconds_per_frame, self.offset = seconds_per_frame, offset
        self.score: float | None = None
        self._frames = 0
        self._finished = False
        # The prefix tree, one entry per node: its last token and parent, its score (LM, words,
        # hotwords) without and with the current word's share of a hotword boost, its LM state (an
        # index into _states) after its completed words, the current word's position in the lexicon
        # and hotword tries (-1: none), and its children as they are made (-1: not yet; INVALID).
        self._count = 0
        self._last = np.zeros(0, dtype=np.int64)
        self._parent = np.zeros(0, dtype=np.int64)
        self._base = np.zeros(0)
        self._score = np.zeros(0)
        self._state = np.zeros(0, dtype=np.int64)
        self._lex = np.zeros(0, dtype=np.int64)
        self._hot = np.zeros(0, dtype=np.int64)
        self._children = np.zeros((0, len(d.vocab)), dtype=np.int64)
        self._states: list[LMState] = []
        self._state_ids: dict[LMState, int] = {}
        root = self._new(d.delimiter, -1, 0.0, 0.0, self._state_id(d.lm.begin() if d.lm else ()),
                         0 if d.lexicon else -1, 0 if d.hotwords else -1)
        # The beams: node, ln P(paths ending in a blank), ln P(paths ending in a token), and along the
        # path that dominates the beam: its last character's first frame, the frame after its last,
        # its best probability, and the record of the characters before it.
        self._node = np.array([root])
        self._pb = np.zeros(1)
        self._pnb = np.full(1, NEG)
        self._start = np.zeros(1, dtype=np.int64)
        self._end = np.zeros(1, dtype=np.int64)
        self._prob = np.zeros(1)
        self._rec = np.full(1, -1, dtype=np.int64)
        # Records of completed characters: token, first frame, end frame, parent record, depth; and prob.
        self._records = np.zeros((1024, 5), dtype=np.int64)
        self._record_probs = np.zeros(1024)
        self._record_count = 0
        self._record_limit = RECORD_LIMIT
        self._agreed: list[tuple[int, int, int, float]] = []  # characters every beam shares

    # ------------------------------------------------------------------ the search

    def feed(self, log_probs) -> None:
        """Take the next frames: (frames, vocab) log-probabilities (log_softmax of the logits)."""
        if self._finished:
            raise RuntimeError("this search is finished; start another with BeamDecoder.stream()")
        lp = np.asarray(log_probs, dtype=np.float64)
        d = self.decoder
        if lp.ndim != 2 or lp.shape[1] != len(d.vocab):
            raise ValueError(f"expected (frames, {len(d.vocab)}) log-probabilities, got shape {lp.shape}")
        if not len(lp):
            return
        probs = np.exp(lp)
        tried = lp >= lp.max(1, keepdims=True) - d.settings.token_threshold
        tried[:, d.blank] = False
        busy = tried.any(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            for t in range(len(lp)):
                if busy[t]:
                    self._step(self._frames + t, lp[t], probs[t], np.flatnonzero(tried[t]))
                else:  # only the blank is likely: every beam ends in a blank, nothing else changes
                    self._pb = np.logaddexp(self._pb, self._pnb) + lp[t, d.blank]
                    self._pnb = np.full(len(self._pnb), NEG)
        self._frames += len(lp)

    def _step(self, t: int, lp: np.ndarray, p: np.ndarray, tokens: np.ndarray) -> None:
        """One frame: every beam stays (blank, or its last token again) or grows by one of `tokens`."""
        d, settings = self.decoder, self.decoder.settings
        node, pb, pnb = self._node, self._pb, self._pnb
        count = len(node)
        total = np.logaddexp(pb, pnb)
        last = self._last[node]
        stay_blank = total + lp[d.blank]
        stay_repeat = pnb + lp[last]
        node_score = self._score[node]
        # a token equal to the last one only extends the paths that end in a blank
        grow = np.where(last[:, None] == tokens, pb[:, None], total[:, None]) + lp[tokens]
        # make only the children that can be among the beam_size best, within beam_threshold of the best
        bound = grow + node_score[:, None]
        candidates = np.concatenate([np.logaddexp(stay_blank, stay_repeat) + node_score, bound.ravel()])
        cutoff = candidates.max() - settings.beam_threshold
        if len(candidates) > settings.beam_size:
            cutoff = max(cutoff, np.partition(candidates, -settings.beam_size)[-settings.beam_size])
        rows, cols = np.nonzero(bound >= cutoff)
        parents, added = node[rows], tokens[cols]
        child = self._children[parents, added]
        todo = np.flatnonzero(child == -1)
        if len(todo):
            child[todo] = self._make(parents[todo], added[todo])
        ok = child >= 0
        rows, child, grow = rows[ok], child[ok], grow[rows[ok], cols[ok]]
        new_character = child != parents[ok]  # else a word delimiter after a delimiter: the same text

        # every way into each node this frame: node, ln P blank-ending, ln P token-ending, source beam, kind
        none = np.full(count, NEG)
        nodes = np.concatenate([node, node, child])
        blank_part = np.concatenate([stay_blank, none, np.full(len(child), NEG)])
        token_part = np.concatenate([none, stay_repeat, grow])
        source = np.concatenate([np.arange(count), np.arange(count), rows])
        kind = np.concatenate([np.zeros(count, np.int8), np.ones(count, np.int8), np.where(new_character, 2, 1)])
        strength = np.maximum(blank_part, token_part)
        unique, group = np.unique(nodes, return_inverse=True)
        order = np.lexsort((-strength, group))
        sorted_group = group[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = sorted_group[1:] != sorted_group[:-1]
        dominant = order[first]  # each node's strongest way in: its timings are kept
        top = strength[dominant]
        top = np.where(np.isfinite(top), top, 0.0)
        size = len(unique)
        new_pb = np.log(np.bincount(group, np.exp(blank_part - top[group]), size)) + top
        new_pnb = np.log(np.bincount(group, np.exp(token_part - top[group]), size)) + top
        scores = np.logaddexp(new_pb, new_pnb) + self._score[unique]

        kept = np.flatnonzero(scores >= scores.max() - settings.beam_threshold)
        if len(kept) > settings.beam_size:
            kept = kept[np.argpartition(-scores[kept], settings.beam_size - 1)[:settings.beam_size]]
        way = dominant[kept]
        src, how = source[way], kind[way]
        start, end, prob, rec = self._start[src], self._end[src], self._prob[src], self._rec[src]
        repeat = how == 1
        end[repeat] = t + 1
        prob[repeat] = np.maximum(prob[repeat], p[last[src[repeat]]])
        grown = np.flatnonzero(how == 2)
        if len(grown):
            rec[grown] = self._push(last[src[grown]], start[grown], end[grown], prob[grown], rec[grown])
            start[grown], end[grown] = t, t + 1
            prob[grown] = p[self._last[unique[kept[grown]]]]
        self._node, self._pb, self._pnb = unique[kept], new_pb[kept], new_pnb[kept]
        self._start, self._end, self._prob, self._rec = start, end, prob, rec
        if self._record_count > self._record_limit:
            self._settle_records(t + 1 - HORIZON)
        if self._count > NODE_LIMIT:
            self._rebuild_nodes()

    # ------------------------------------------------------------------ the prefix tree

    def _new(self, token, parent, base, score, state, lex, hot):
        """Add nodes (arrays of equal length, or scalars for one); return their ids."""
        size = np.size(token)
        if self._count + size > len(self._last):
            grow = max(1024, len(self._last), size)
            for name in ("_last", "_parent", "_base", "_score", "_state", "_lex", "_hot"):
                values = getattr(self, name)
                setattr(self, name, np.concatenate([values, np.zeros(grow, dtype=values.dtype)]))
            self._children = np.concatenate([self._children, np.full((grow, self._children.shape[1]), -1)])
        ids = slice(self._count, self._count + size) if np.ndim(token) else self._count
        self._last[ids], self._parent[ids], self._base[ids], self._score[ids] = token, parent, base, score
        self._state[ids], self._lex[ids], self._hot[ids] = state, lex, hot
        self._count += size
        return np.arange(ids.start, ids.stop) if np.ndim(token) else ids

    def _state_id(self, state: LMState) -> int:
        index = self._state_ids.get(state)
        if index is None:
            index = self._state_ids[state] = len(self._states)
            self._states.append(state)
        return index

    def _make(self, parents: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The children of `parents` by `tokens` (made once, then read from the child table), INVALID
        where the lexicon forbids them. Letters are made together; a word delimiter completes a word."""
        d = self.decoder
        made = np.full(len(parents), INVALID, dtype=np.int64)
        letters = np.flatnonzero(tokens != d.delimiter)
        if len(letters):
            p, token = parents[letters], tokens[letters]
            lex = d.lexicon.step(self._lex[p], token) if d.lexicon else np.full(len(p), -1)
            hot = d.hotwords.step(self._hot[p], token) if d.hotwords else np.full(len(p), -1)
            share = d.hotwords.partial[hot] if d.hotwords else 0.0
            if d.lexicon is not None and d.lm is not None:  # look ahead: the best word this one can become
                share = share + d.lm_weight * d.lexicon.ahead[lex]
            ok = lex >= 0 if d.lexicon else np.ones(len(p), dtype=bool)
            base = self._base[p]
            made[letters[ok]] = self._new(token[ok], p[ok], base[ok], (base + share)[ok], self._state[p[ok]],
                                          lex[ok], hot[ok])
        for j in np.flatnonzero(tokens == d.delimiter).tolist():
            made[j] = self._complete(int(parents[j]))
        self._children[parents, tokens] = made
        return made

    def _complete(self, node: int) -> int:
        """The child of `node` by a word delimiter: its current word completes (LM, word score, hotword
        boost); INVALID if the lexicon lacks the word. After a delimiter, the node itself."""
        d = self.decoder
        if self._last[node] == d.delimiter:
            return node  # spaces do not repeat
        if d.lexicon is not None and math.isnan(d.lexicon.value[self._lex[node]]):
            return INVALID
        score, state = float(self._base[node]) + d.word_score, self._states[self._state[node]]
        hot = self._hot[node]
        if hot >= 0 and not math.isnan(d.hotwords.value[hot]):
            score += d.hotwords.value[hot]
        if d.lm is not None:
            logp, state = d.lm_score(state, self._word(node))
            score += d.lm_weight * logp
        return self._new(d.delimiter, node, score, score, self._state_id(state),
                         0 if d.lexicon else -1, 0 if d.hotwords else -1)

    def _word(self, node: int) -> str:
        """The current word of a node: the letters since the last word delimiter."""
        d, letters = self.decoder, []
        while self._last[node] != d.delimiter:
            letters.append(d.vocab.tokens[self._last[node]])
            node = self._parent[node]
        return "".join(reversed(letters))

    def _rebuild_nodes(self) -> None:
        """Keep only the beams' nodes and their current words (children are made again on demand)."""
        keep: set[int] = set()
        for node in self._node.tolist():
            while node >= 0 and node not in keep:
                keep.add(node)
                if self._last[node] == self.decoder.delimiter:
                    break
                node = int(self._parent[node])
        old = np.array(sorted(keep), dtype=np.int64)
        index = np.full(self._count + 1, -1, dtype=np.int64)  # index[-1] stays -1
        index[old] = np.arange(len(old))
        states = sorted(set(self._state[old].tolist()))
        state_index = np.zeros(len(self._states), dtype=np.int64)
        state_index[states] = np.arange(len(states))
        self._states = [self._states[s] for s in states]
        self._state_ids = {state: i for i, state in enumerate(self._states)}
        values = {name: getattr(self, name)[old] for name in ("_last", "_parent", "_base", "_score", "_state",
                                                              "_lex", "_hot")}
        values["_parent"] = index[values["_parent"]]
        values["_state"] = state_index[values["_state"]]
        self._count = 0
        self._last = self._last[:0]  # _new allocates afresh
        self._children = self._children[:0]
        for name in values:
            setattr(self, name, getattr(self, name)[:0])
        ids = self._new(values["_last"], values["_parent"], values["_base"], values["_score"], values["_state"],
                        values["_lex"], values["_hot"])
        linked = values["_parent"] >= 0  # a kept child must be found again, or its text would split in two
        self._children[values["_parent"][linked], values["_last"][linked]] = ids[linked]
        self._node = index[self._node]

    # ------------------------------------------------------------------ characters and their times

    def _push(self, token, start, end, prob, parent) -> np.ndarray:
        """Record completed characters (arrays of equal length); return their record ids."""
        count = len(token)
        while self._record_count + count > len(self._records):
            self._records = np.concatenate([self._records, np.zeros_like(self._records)])
            self._record_probs = np.concatenate([self._record_probs, np.zeros_like(self._record_probs)])
        ids = np.arange(self._record_count, self._record_count + count)
        parent_depth = np.where(parent >= 0, self._records[np.maximum(parent, 0), 4], 0)
        self._records[ids] = np.stack([token, start, end, parent, parent_depth + 1], axis=1)
        self._record_probs[ids] = prob
        self._record_count += count
        return ids

    def _chain(self, record: int) -> list[tuple[int, int, int, float]]:
        """The characters recorded up to `record`, in order."""
        characters = []
        while record >= 0:
            token, start, end, parent, _ = self._records[record].tolist()
            characters.append((token, start, end, float(self._record_probs[record])))
            record = parent
        return characters[::-1]

    def _settle_records(self, horizon: int) -> None:
        """Move the characters that every beam shares (up to their deepest common record) out of the
        search, and drop the records no beam leads to.

        Two beams that differ only in characters older than the LM's context keep their order for good
        (the same frames and LM scores follow for both), and may otherwise both live on for the rest of
        the recording, keeping the common part from growing. So first the beams that disagree with the
        best one on the characters that ended before frame `horizon` are dropped."""
        parent, depth = self._records[:, 3], self._records[:, 4]
        anchor = int(self._rec[np.argmax(np.logaddexp(self._pb, self._pnb) + self._score[self._node])])
        while anchor >= 0 and self._records[anchor, 2] > horizon:
            anchor = int(parent[anchor])
        if anchor >= 0:
            ancestor = self._rec.copy()
            while (deeper := depth[np.maximum(ancestor, 0)] > depth[anchor]).any():
                ancestor[deeper] = parent[ancestor[deeper]]
            agree = ancestor == anchor
            for name in ("_node", "_pb", "_pnb", "_start", "_end", "_prob", "_rec"):
                setattr(self, name, getattr(self, name)[agree])
        heads = set(self._rec.tolist())
        common = -1
        if -1 not in heads:
            live, heap = set(heads), [(-int(depth[r]), r) for r in heads]
            heapq.heapify(heap)
            while len(live) > 1:
                _, record = heapq.heappop(heap)
                live.discard(record)
                up = int(parent[record])
                if up < 0:
                    break
                if up not in live:
                    live.add(up)
                    heapq.heappush(heap, (-int(depth[up]), up))
            else:
                common = live.pop()
        self._agreed += self._chain(common)
        kept: set[int] = set()
        for record in heads:
            while record >= 0 and record != common and record not in kept:
                kept.add(record)
                record = int(parent[record])
        old = np.array(sorted(kept), dtype=np.int64)
        index = np.full(self._record_count + 1, -1, dtype=np.int64)  # index[-1] stays -1
        index[old] = np.arange(len(old))
        index[common] = -1
        records = self._records[old]
        records[:, 3] = index[records[:, 3]]
        self._records[:len(old)] = records
        self._record_probs[:len(old)] = self._record_probs[old]
        self._record_count = len(old)
        self._rec = index[self._rec]
        self._record_limit = max(RECORD_LIMIT, 2 * len(old))

    # ------------------------------------------------------------------ the end

    def finish(self) -> Decoded:
        """Complete every beam's last word, add the LM's end of sentence, and return the best text."""
        if self._finished:
            raise RuntimeError("this search is already finished")
        self._finished = True
        d = self.decoder
        total = np.logaddexp(self._pb, self._pnb)
        nodes = self._node.tolist()
        final = np.full(len(nodes), NEG)
        keys = np.full(len(nodes), -1)
        end_of_sentence: dict[int, float] = {}
        for i, node in enumerate(nodes):
            key = int(self._children[node, d.delimiter])
            if key == -1:
                key = int(self._make(np.array([node]), np.array([d.delimiter]))[0])
            if key < 0:
                continue  # the lexicon lacks the last word
            if key not in end_of_sentence:
                state = self._states[self._state[key]]
                end_of_sentence[key] = d.lm_weight * d.lm.finish(state) if d.lm else 0.0
            keys[i], final[i] = key, total[i] + self._score[key] + end_of_sentence[key]
        if not np.isfinite(final).any():  # no beam ends in a word of the lexicon: take the best as it is
            final = total + self._score[self._node]
            keys = np.arange(len(nodes))
        best_key = max(set(keys.tolist()), key=lambda k: np.logaddexp.reduce(final[keys == k]))
        same = keys == best_key
        self.score = float(np.logaddexp.reduce(final[same]))
        beam = int(np.flatnonzero(same)[np.argmax(final[same])])
        characters = self._agreed + self._chain(int(self._rec[beam]))
        if self._last[nodes[beam]] != d.delimiter:
            characters.append((int(self._last[nodes[beam]]), int(self._start[beam]), int(self._end[beam]),
                               float(self._prob[beam])))
        tokens = d.vocab.tokens
        return words_from_characters([(tokens[t], s, e, p) for t, s, e, p in characters], d.vocab,
                                     self.seconds_per_frame, self.offset)
