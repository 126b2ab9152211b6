"""Word n-gram models: modified Kneser-Ney by hand, normalisation by brute force, ARPA by hand, KenLM."""

from __future__ import annotations

import gzip
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from wav2vec2.errors import LanguageModelError
from wav2vec2.lm import KenLMModel, estimate, load_lm, write_arpa

LN10 = math.log(10)
COMMAND = str(Path(sys.executable).parent / "wav2vec2")


def sentence_logp(lm, words: list[str]) -> float:
    state, total = lm.begin(), 0.0
    for word in words:
        logp, state = lm.score(state, word)
        total += logp
    return total + lm.finish(state)


def test_bigram_probabilities_by_hand():
    # <s> B A </s> | <s> C A </s> | <s> A C </s> | <s> C C </s> | <s> C </s> | <s> B C </s>
    lm = estimate(["B A", "C A", "A C", "C C", "C", "B C"], order=2)
    # Bigrams keep their counts: <s> A 1, <s> B 2, <s> C 3, B A 1, C A 1, A C 1, C C 1, B C 1, A </s> 2, C </s> 4.
    # Counts of counts t1..t4 = 6, 2, 1, 1: Y = 6 / (6 + 2*2) = 0.6 and D_k = k - (k+1) Y t_{k+1} / t_k.
    y = 0.6
    d1, d2, d3 = 1 - 2 * y * 2 / 6, 2 - 3 * y * 1 / 2, 3 - 4 * y * 1 / 1
    assert (d1, d2, d3) == pytest.approx((0.6, 1.1, 0.6))
    # Unigrams count distinct left neighbours: A {<s>,B,C} 3, B {<s>} 1, C {<s>,A,B,C} 4, </s> {A,C} 2, <unk> 0.
    # t1..t4 = 1, 1, 1, 1: Y = 1/3, D = 1/3, 1, 5/3. Sum 10; N1 = 1 (B), N2 = 1 (</s>), N3+ = 2 (A, C).
    u1, u2, u3 = 1 / 3, 1.0, 5 / 3
    gamma = (u1 * 1 + u2 * 1 + u3 * 2) / 10  # 7/15, spread over the 5 words A B C </s> <unk>
    unigram = {"A": (3 - u3) / 10 + gamma / 5, "B": (1 - u1) / 10 + gamma / 5, "C": (4 - u3) / 10 + gamma / 5,
               "</s>": (2 - u2) / 10 + gamma / 5, "<unk>": gamma / 5}
    assert unigram == pytest.approx({"A": 17 / 75, "B": 12 / 75, "C": 49 / 150, "</s>": 29 / 150, "<unk>": 14 / 150})
    assert sum(unigram.values()) == pytest.approx(1.0)
    # After <s>: A 1, B 2, C 3 (sum 6; one each of count 1, 2, 3+).
    g_bos = (d1 + d2 + d3) / 6
    expected = {("<s>", "A"): (1 - d1) / 6 + g_bos * unigram["A"],
                ("<s>", "B"): (2 - d2) / 6 + g_bos * unigram["B"],
                ("<s>", "C"): (3 - d3) / 6 + g_bos * unigram["C"],
                ("<s>", "</s>"): g_bos * unigram["</s>"]}
    # After C: A 1, C 1, </s> 4 (sum 6). After A: C 1, </s> 2 (sum 3).
    g_c, g_a = (2 * d1 + d3) / 6, (d1 + d2) / 3
    expected.update({("C", "</s>"): (4 - d3) / 6 + g_c * unigram["</s>"],
                     ("C", "B"): g_c * unigram["B"],
                     ("A", "C"): (1 - d1) / 3 + g_a * unigram["C"],
                     ("A", "WORD-NEVER-SEEN"): g_a * unigram["<unk>"]})
    for (context, word), p in expected.items():
        assert math.exp(lm.score((context,), word)[0]) == pytest.approx(p, rel=1e-12), (context, word)
    assert lm.backoff[("C",)] == pytest.approx(math.log(0.3))
    assert math.exp(lm.finish(("C",))) == pytest.approx(expected[("C", "</s>")])
    assert math.exp(lm.score((), "B")[0]) == pytest.approx(12 / 75)


def test_trigram_with_fallback_discounts_by_hand():
    # <s> A B </s> twice, <s> B A </s>, <s> A </s>: no order has usable counts of counts (t3 = 0 for trigrams
    # and unigrams; D2 = 0 for bigrams), so every order takes the fallback discounts 0.5, 1, 1.5.
    lm = estimate(["A B", "A B", "B A", "A"], order=3)
    d1, d2, d3 = 0.5, 1.0, 1.5
    # Unigrams: A {<s>,B} 2, B {<s>,A} 2, </s> {A,B} 2, <unk> 0; sum 6, N2 = 3, over 4 words.
    g = 3 * d2 / 6
    p_a, p_b, p_end = [(2 - d2) / 6 + g / 4] * 3
    # Bigrams: <s> A 3 and <s> B 1 (raw counts); A B 1, A </s> 2, B A 1, B </s> 1 (left neighbours in trigrams).
    g_bos, g_a, g_b = (d1 + d3) / 4, (d1 + d2) / 3, 2 * d1 / 2
    p_a_bos = (3 - d3) / 4 + g_bos * p_a
    p_b_a, p_end_b = (1 - d1) / 3 + g_a * p_b, (1 - d1) / 2 + g_b * p_end
    # Trigrams keep their counts: <s> A B 2, <s> A </s> 1, A B </s> 2, <s> B A 1, B A </s> 1.
    g_bos_a, g_ab = (d1 + d2) / 3, d2 / 2
    p_b_bos_a = (2 - d2) / 3 + g_bos_a * p_b_a
    p_end_ab = (2 - d2) / 2 + g_ab * p_end_b
    assert (p_a_bos, p_b_bos_a, p_end_ab) == pytest.approx((25 / 48, 23.5 / 48, 33.5 / 48))
    assert sentence_logp(lm, ["A", "B"]) == pytest.approx(math.log(p_a_bos * p_b_bos_a * p_end_ab), rel=1e-12)
    # A A was never seen: back off twice, to the unigram.
    assert math.exp(lm.score(("<s>", "A"), "A")[0]) == pytest.approx(g_bos_a * g_a * p_a)
    assert lm.sizes() == [5, 6, 5]  # <s> A B </s> <unk>


def corpus(seed: int, sentences: int = 150, words: int = 9) -> list[str]:
    """Sentences over a small vocabulary with skewed word frequencies."""
    rng = random.Random(seed)
    vocabulary = [f"W{i}" for i in range(words)]
    return [" ".join(rng.choices(vocabulary, weights=[1 / (i + 1) for i in range(words)], k=rng.randint(1, 8)))
            for _ in range(sentences)]


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("options", [{}, {"min_count": (2,)}, {"min_count": (1, 2, 3)}, {"max_vocab": 5}])
def test_every_distribution_sums_to_one(order, options):
    lm = estimate(corpus(order), order, **options)
    words = sorted(lm.vocabulary - {"<s>"})
    assert "</s>" in words and "<unk>" in words
    rng = random.Random(0)
    contexts = {gram[:-1] for gram in lm.logp if gram[-1] != "</s>"}
    contexts |= {tuple(rng.choices([f"W{i}" for i in range(9)], k=order - 1)) for _ in range(20)}  # mostly unseen
    assert len(contexts) > 10
    for context in contexts:
        total = sum(math.exp(lm.score(context, word)[0]) for word in words)
        assert total == pytest.approx(1.0, abs=1e-9), context
    full = estimate(corpus(order), order)
    if max(options.get("min_count", (1,))[:order - 1]) > 1:  # pruning drops n-grams, never words
        assert sum(lm.sizes()[1:]) < sum(full.sizes()[1:]) and lm.sizes()[0] == full.sizes()[0]
    if "max_vocab" in options:
        assert lm.sizes()[0] == 5 + 3 < full.sizes()[0]  # with <s>, </s> and <unk>


def test_arpa_round_trip(tmp_path):
    lm = estimate(corpus(7), 3, min_count=(1, 2))
    for name in ("lm.arpa", "lm.arpa.gz"):
        write_arpa(lm, tmp_path / name)
        loaded = load_lm(tmp_path / name)
        assert loaded.order == 3 and loaded.sizes() == lm.sizes()
        for sentence in corpus(8, sentences=30, words=11):  # W9 and W10 are unknown words
            state, loaded_state = lm.begin(), loaded.begin()
            for word in sentence.split():
                (logp, state), (loaded_logp, loaded_state) = lm.score(state, word), loaded.score(loaded_state, word)
                assert loaded_logp == pytest.approx(logp, abs=1e-5) and loaded_state == state
            assert loaded.finish(loaded_state) == pytest.approx(lm.finish(state), abs=1e-5)
    assert gzip.open(tmp_path / "lm.arpa.gz", "rt").readline() == "\\data\\\n"


HAND_ARPA = """\
\\data\\
ngram 1=5
ngram 2=3
ngram 3=1

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.5
-0.5\t</s>
-0.6\tA\t-0.2
-0.7\tB\t-0.3

\\2-grams:
-0.3\t<s> A\t-0.1
-0.4\tA B\t-0.15
-0.2\tB </s>

\\3-grams:
-0.05\t<s> A B

\\end\\
"""


def test_hand_written_arpa(tmp_path):
    (tmp_path / "hand.arpa").write_text(HAND_ARPA)
    lm = load_lm(tmp_path / "hand.arpa")
    assert lm.order == 3 and "A" in lm and "Z" not in lm

    def score(state, word, log10):
        logp, following = lm.score(state, word)
        assert logp == pytest.approx(log10 * LN10, abs=1e-12), (state, word)
        return following

    state = score(lm.begin(), "A", -0.3)  # <s> A
    assert score(state, "B", -0.05) == ("A", "B")  # <s> A B
    assert lm.finish(("A", "B")) == pytest.approx((-0.15 - 0.2) * LN10)  # bo(A B) + P(</s> | B)
    after_a = score(state, "A", -0.1 - 0.2 - 0.6)  # bo(<s> A) + bo(A) + P(A)
    assert score(after_a, "Z", -0.2 - 1.0) == ()  # bo(A) + P(<unk>); <unk> has no extensions
    assert score(("B",), "B", -0.3 - 0.7) == ("B",)  # B is kept: it has a back-off weight
    # "<s> A A" and "B A" share their longest known context, A: equal states, so beams merge.
    assert after_a == score(("B",), "A", -0.3 - 0.6) == ("A",)
    assert score(lm.begin(), "A", -0.3) != after_a  # <s> A is a context of its own

    (tmp_path / "no-unk.arpa").write_text(HAND_ARPA.replace("ngram 1=5", "ngram 1=4").replace("-1.0\t<unk>\n", ""))
    lm = load_lm(tmp_path / "no-unk.arpa")
    assert lm.score((), "Z")[0] == pytest.approx(-100 * LN10)


@pytest.mark.parametrize("change, fragment", [
    (lambda t: t.replace("-0.4\tA B\t-0.15", "-0.4"), "line 15"),
    (lambda t: t.replace("-0.4\tA B", "x\tA B"), "line 15: not a number"),
    (lambda t: t.replace("-0.4\tA B", "0.4\tA B"), "line 15: a log10 probability must not be positive"),
    (lambda t: t.replace("ngram 2=3", "ngram 2=4"), "line 18: 3 2-grams, but the \\data\\ header says 4"),
    (lambda t: t.replace("\\end\\\n", ""), "truncated"),
    (lambda t: t.replace("\\3-grams:", "\\4-grams:"), "line 18: expected \\3-grams:"),
    (lambda t: t.replace("ngram 3=1", "ngram three"), "line 4: expected 'ngram N=COUNT'"),
    (lambda t: t.replace("\\data\\", "data"), "not an ARPA file"),
])
def test_malformed_arpa_names_the_line(tmp_path, change, fragment):
    path = tmp_path / "bad.arpa"
    path.write_text(change(HAND_ARPA))
    with pytest.raises(LanguageModelError, match="bad.arpa") as error:
        load_lm(path)
    assert fragment in str(error.value)


def test_missing_binary_and_kenlm_files(tmp_path, monkeypatch):
    with pytest.raises(LanguageModelError, match="missing.arpa: no such"):
        load_lm(tmp_path / "missing.arpa")
    (tmp_path / "binary").write_bytes(b"\x00\xff\x10" * 100)
    with pytest.raises(LanguageModelError, match="binary: not a readable ARPA file"):
        load_lm(tmp_path / "binary")
    (tmp_path / "lm.bin").write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0" + b"\0" * 100)
    monkeypatch.setitem(sys.modules, "kenlm", None)  # as if not installed
    with pytest.raises(LanguageModelError, match="pip install kenlm"):
        load_lm(tmp_path / "lm.bin")


def test_our_reader_scores_as_kenlm(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    lm = estimate(corpus(11, sentences=300, words=15), 4, min_count=(1, 1, 2))
    write_arpa(lm, tmp_path / "lm.arpa")
    ours, reference, wrapped = load_lm(tmp_path / "lm.arpa"), kenlm.Model(str(tmp_path / "lm.arpa")), \
        KenLMModel(tmp_path / "lm.arpa")
    for sentence in corpus(12, sentences=40, words=17):  # W15 and W16 are unknown words
        words = sentence.split()
        state, reference_state = ours.begin(), kenlm.State()
        reference.BeginSentenceWrite(reference_state)
        for word in words + ["</s>"]:
            following = kenlm.State()
            expected = reference.BaseScore(reference_state, word, following)
            logp, state = ours.score(state, word)
            assert logp / LN10 == pytest.approx(expected, abs=1e-4), (sentence, word)
            reference_state = following
        assert sentence_logp(ours, words) / LN10 == pytest.approx(reference.score(sentence), abs=1e-3)
        assert sentence_logp(wrapped, words) == pytest.approx(sentence_logp(ours, words), abs=1e-3)


def lm_build(*args) -> subprocess.CompletedProcess:
    return subprocess.run([COMMAND, "lm", "build", *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_cli_build(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Hello, world!\nthe world's end\n\nroom 101\nhello world again\n", encoding="utf-8")
    result = lm_build("--text", text, text, "--order", "3", "--out", tmp_path / "lm.arpa")
    assert result.returncode == 0, result.stderr
    assert "6 sentences, 16 words" in result.stdout and "vocabulary: 2)" in result.stdout  # "room 101", twice
    lm = load_lm(tmp_path / "lm.arpa")
    assert "HELLO" in lm and "WORLD'S" in lm and "hello" not in lm and lm.order == 3
    assert f"{lm.sizes()[2]} 3-grams" in result.stdout

    model = tmp_path / "lower-case-model"  # a checkpoint's vocabulary: lower-case letters, no apostrophe
    model.mkdir()
    model.joinpath("vocab.json").write_text('{"<pad>": 0, "|": 1, ' + ", ".join(
        f'"{c}": {i}' for i, c in enumerate("abcdefghijklmnopqrstuvwxyz", 2)) + "}")
    result = lm_build("--text", text, "--order", "2", "--out", tmp_path / "lower.arpa", "--model", model,
                      "--prune", "2", "--max-vocab", "3")
    assert result.returncode == 0, result.stderr
    assert "3 sentences" in result.stdout and "vocabulary: 1)" in result.stdout  # the digits; ' is dropped
    lm = load_lm(tmp_path / "lower.arpa")
    # hello 2, world 2, then the first of again, end, the, worlds (once each): "<unk> <unk> <unk>"
    assert "hello" in lm and "world" in lm and "again" in lm and "worlds" not in lm and "HELLO" not in lm
    assert lm.sizes()[1] == 3  # seen twice: <s> hello, hello world, <unk> <unk>


@pytest.mark.parametrize("args, fragment", [
    (["--text", "missing.txt"], "missing.txt: no such text file"),
    (["--text", "empty.txt"], "no sentences"),
    (["--text", "empty.txt", "--model", "no-such-folder"], "no-such-folder"),
])
def test_cli_errors_are_one_line(tmp_path, args, fragment):
    (tmp_path / "empty.txt").write_text("\n123\n")
    args = [str(tmp_path / a) if a.endswith((".txt", "folder")) else a for a in args]
    result = lm_build(*args, "--out", tmp_path / "lm.arpa")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr
