"""Beam search against brute force (every path of a few frames), against greedy decoding and known
texts on synthetic peaky emissions, and through transcribe, evaluate, streaming and the CLI."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch

import wav2vec2
from wav2vec2 import beam
from wav2vec2.beam import BeamDecoder, BeamSettings, parse_hotword, read_lexicon
from wav2vec2.decoding import best_path, greedy_decode
from wav2vec2.errors import LanguageModelError
from wav2vec2.evaluate import evaluate, log_probs_of, tune
from wav2vec2.lm import load_lm
from wav2vec2.manifest import load_data
from wav2vec2.transcribe import chunk_logits, transcribe
from wav2vec2.vocab import Vocabulary

from .conftest import VOCAB, write_audio

LN10 = math.log(10)
EXACT = dict(beam_size=100_000, token_threshold=1e9, beam_threshold=1e9)  # no pruning at all
TINY = Vocabulary(["<pad>", "|", "A", "B"])
ENGLISH = Vocabulary(list(VOCAB))


def arpa(path: Path, unigrams: dict[str, float]) -> Path:
    """A unigram ARPA file: {word: log10 probability}."""
    lines = ["\\data\\", f"ngram 1={len(unigrams)}", "", "\\1-grams:"]
    lines += [f"{p}\t{w}" for w, p in unigrams.items()] + ["", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return path


def random_log_probs(frames: int, size: int, rng: np.random.Generator, scale: float = 2.0) -> np.ndarray:
    x = rng.standard_normal((frames, size)) * scale
    return x - np.logaddexp.reduce(x, axis=1, keepdims=True)


def brute_force(log_probs: np.ndarray, vocab: Vocabulary, text_score=lambda words: 0.0) -> dict[str, float]:
    """ln of the total probability of every text (every path of every frame enumerated), plus
    text_score(words); None from text_score excludes the text."""
    totals: dict[str, float] = {}
    for path in itertools.product(range(len(vocab)), repeat=len(log_probs)):
        tokens = [k for i, k in enumerate(path) if k != vocab.blank and (i == 0 or path[i - 1] != k)]
        text = " ".join("".join(vocab.tokens[k] for k in tokens).replace(vocab.word_delimiter, " ").split())
        totals[text] = np.logaddexp(totals.get(text, -np.inf), sum(log_probs[t, k] for t, k in enumerate(path)))
    scored = {text: (total, text_score(text.split())) for text, total in totals.items()}
    return {text: total + extra for text, (total, extra) in scored.items() if extra is not None}


def decode_in_pieces(decoder: BeamDecoder, log_probs: np.ndarray, rng: np.random.Generator):
    """Feed the frames in chunks of random sizes (some empty), as transcribe and streaming do."""
    search = decoder.stream()
    cuts = np.sort(rng.integers(0, len(log_probs) + 1, size=3))
    for a, b in zip([0, *cuts], [*cuts, len(log_probs)]):
        search.feed(log_probs[a:b])
    return search.finish(), search.score


# ---------------------------------------------------------------------------- exact against brute force

@pytest.mark.parametrize("seed", range(40))
def test_the_best_text_and_its_probability_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    log_probs = random_log_probs(int(rng.integers(1, 7)), len(TINY), rng, scale=float(rng.uniform(0.5, 3)))
    totals = brute_force(log_probs, TINY)
    decoded, score = decode_in_pieces(BeamDecoder(TINY, BeamSettings(**EXACT)), log_probs, rng)
    best = max(totals.values())
    assert score == pytest.approx(best, abs=1e-9)
    assert totals[decoded.text] == pytest.approx(best, abs=1e-9)  # the best text (or one tied with it)


UNIGRAMS = {"</s>": -0.5, "<s>": -99, "<unk>": -2.0, "A": -0.8, "AB": -0.6, "BA": -1.2, "B": -1.5}


@pytest.mark.parametrize("case", ["lm", "lm and word score", "lexicon", "hotwords", "everything"])
@pytest.mark.parametrize("seed", range(8))
def test_lm_lexicon_and_hotword_scores_match_brute_force(tmp_path, case, seed):
    """The decoder's best text and total against every text scored by hand: ln P(CTC) + lm_weight *
    sum of ln P(word) (unigrams, <unk> for the rest) + word_score per word + hotword boosts."""
    rng = np.random.default_rng(100 + seed)
    lm = load_lm(arpa(tmp_path / "lm.arpa", UNIGRAMS)) if "lm" in case or case == "everything" else None
    weight, word_score = 0.7, (1.3 if "score" in case or case == "everything" else 0.0)
    lexicon = ["A", "AB", "BAB"] if case in ("lexicon", "everything") else None
    boosts = {"BA": 2.0, "ABA": 3.5} if case in ("hotwords", "everything") else {}
    hotwords = tuple(f"{w}:{b}" for w, b in boosts.items())

    def by_hand(words):
        if lexicon is not None and any(w not in lexicon and w not in boosts for w in words):
            return None
        total = word_score * len(words) + sum(boosts.get(w, 0.0) for w in words)
        if lm is not None:
            logp = [UNIGRAMS.get(w, UNIGRAMS["<unk>"]) * LN10 for w in words] + [UNIGRAMS["</s>"] * LN10]
            logp = [max(p, beam.HOTWORD_LM_FLOOR) if w in boosts and w not in UNIGRAMS else p
                    for w, p in zip(words + ["</s>"], logp)]
            total += weight * sum(logp)
        return total

    log_probs = random_log_probs(int(rng.integers(3, 7)), len(TINY), rng)
    totals = brute_force(log_probs, TINY, by_hand)
    settings = BeamSettings(**EXACT, lm_weight=weight, word_score=word_score, hotwords=hotwords)
    decoded, score = decode_in_pieces(BeamDecoder(TINY, settings, lm=lm, lexicon=lexicon), log_probs, rng)
    assert score == pytest.approx(max(totals.values()), abs=1e-9)
    assert totals[decoded.text] == pytest.approx(score, abs=1e-9)


# ---------------------------------------------------------------------------- synthetic speech

def emissions(spelling: str, rng: np.random.Generator | None = None, rivals: dict[int, tuple[str, float]] = None,
              strength: float = 12.0) -> np.ndarray:
    """Log-probs of a frame-by-frame spelling ("_" blank, "|" delimiter): each frame's token `strength`
    nats above the others (which get noise), the blank 4 nats below on letter frames; `rivals` puts
    another token `margin` nats below the frame's token (above if negative)."""
    rng = rng or np.random.default_rng(0)
    ids = ENGLISH.ids
    target = [ENGLISH.blank if c == "_" else ids[c] for c in spelling]
    logits = rng.normal(0.0, 0.5, (len(target), len(ENGLISH)))
    for t, token in enumerate(target):
        logits[t, token] = strength
        if token != ENGLISH.blank:
            logits[t, ENGLISH.blank] = strength - 4.0
    for t, (token, margin) in (rivals or {}).items():
        logits[t, ids[token]] = strength - margin
    return (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)).astype(np.float32)


def greedy(log_probs: np.ndarray, offset: float = 0.0):
    ids, probs = best_path(torch.from_numpy(log_probs))
    return greedy_decode(ids, probs, ENGLISH, offset=offset)


def speech_like(words: list[str], rng: np.random.Generator, confusion: float) -> np.ndarray:
    """Each letter 1-3 frames, 0-3 blanks after it, a delimiter frame after each word; `confusion`
    of the letter frames get a rival letter 1 nat below to 2 nats above the right one."""
    spelling, rivals = "_" * int(rng.integers(1, 6)), {}
    for word in words:
        for i, letter in enumerate(word):
            for _ in range(int(rng.integers(1, 4))):
                if rng.random() < confusion:
                    rivals[len(spelling)] = (str(rng.choice(list("ETAONISRHDLU"))), float(rng.uniform(-2, 1)))
                spelling += letter
            gap = int(rng.integers(0, 4))
            spelling += "_" * (max(gap, 1) if i + 1 < len(word) and word[i + 1] == letter else gap)
        spelling += "|" + "_" * int(rng.integers(0, 3))
    rivals = {t: r for t, r in rivals.items() if r[0] != spelling[t]}
    return emissions(spelling, rng, rivals)


WORDS = "THE A CAT SAT ON MAT AND DOG RAN TO HIS HOUSE IN RAIN SUN SHONE OUT LOUD".split()


def test_without_an_lm_beam_search_is_not_worse_than_greedy():
    rng = np.random.default_rng(0)
    truths, utterances = [], []
    for _ in range(40):
        words = list(rng.choice(WORDS, 12))
        truths.append(" ".join(words))
        utterances.append(speech_like(words, rng, confusion=0.08))
    decoder = BeamDecoder(ENGLISH, BeamSettings())
    greedy_texts = [greedy(u).text for u in utterances]
    beam_texts = [decoder.decode(u).text for u in utterances]
    greedy_wer, beam_wer = jiwer.wer(truths, greedy_texts), jiwer.wer(truths, beam_texts)
    assert greedy_wer > 0.02  # the rivals do fool greedy decoding
    assert beam_wer <= greedy_wer + 0.005
    differ = sum(a != b for a, b in zip(greedy_texts, beam_texts))
    assert differ < len(utterances) // 2  # the same text on most utterances


def test_word_times_and_confidences_are_greedys_when_the_best_path_is_greedys():
    rng = np.random.default_rng(1)
    for _ in range(5):
        log_probs = speech_like(list(rng.choice(WORDS, 10)), rng, confusion=0.0)
        expected = greedy(log_probs, offset=3.5)
        decoded = BeamDecoder(ENGLISH, BeamSettings(beam_size=16)).decode(log_probs, offset=3.5)
        assert decoded.text == expected.text
        assert [(w.text, w.start, w.end) for w in decoded.words] == [(w.text, w.start, w.end) for w in expected.words]
        assert [w.confidence for w in decoded.words] == pytest.approx([w.confidence for w in expected.words],
                                                                      abs=2e-4)


# " the kat sat ": K beats C by one nat on the first frame of the second word
THE_KAT_SAT = "_TT_H_EE_|__KK_A_TT_|__S_AA_T__"


def test_the_lm_moves_the_output_to_words_it_knows(tmp_path):
    log_probs = emissions(THE_KAT_SAT, rivals={12: ("C", 1.0), 13: ("C", 1.0)})
    assert greedy(log_probs).text == "THE KAT SAT"
    assert BeamDecoder(ENGLISH, BeamSettings()).decode(log_probs).text == "THE KAT SAT"
    lm = load_lm(arpa(tmp_path / "lm.arpa", {"</s>": -1.0, "<s>": -99, "<unk>": -4.0, "THE": -0.8, "CAT": -1.0,
                                             "SAT": -1.0}))
    assert BeamDecoder(ENGLISH, BeamSettings(lm_weight=0.5), lm=lm).decode(log_probs).text == "THE CAT SAT"
    # a weight too small to pay for the acoustic difference leaves it
    assert BeamDecoder(ENGLISH, BeamSettings(lm_weight=0.05), lm=lm).decode(log_probs).text == "THE KAT SAT"


def test_a_lexicon_allows_only_its_words(tmp_path):
    log_probs = emissions(THE_KAT_SAT, rivals={12: ("C", 1.0), 13: ("C", 1.0)})
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("# a flashlight-style lexicon, in lower case for an upper-case model\n"
                       "the\tt h e |\ncat\tc a t |\nsat s a t\nmat\n")
    decoded = BeamDecoder(ENGLISH, BeamSettings(lexicon=str(lexicon))).decode(log_probs)
    assert decoded.text == "THE CAT SAT"
    # a word that cannot end in the lexicon: the frames can only be read as words of it
    decoded = BeamDecoder(ENGLISH, BeamSettings(), lexicon=["THE", "AT", "SAT"]).decode(log_probs)
    assert set(decoded.text.split()) <= {"THE", "AT", "SAT"}


def test_hotwords_change_the_output_when_boosted_and_not_otherwise(tmp_path):
    log_probs = emissions(THE_KAT_SAT, rivals={12: ("C", -1.0), 13: ("C", -1.0)})  # now C is ahead
    plain = BeamDecoder(ENGLISH, BeamSettings()).decode(log_probs)
    assert plain.text == "THE CAT SAT"

    def decode(*hotwords, lm=None):
        return BeamDecoder(ENGLISH, BeamSettings(hotwords=hotwords), lm=lm).decode(log_probs).text

    assert decode("KAT:5") == "THE KAT SAT"
    assert decode("KAT:0") == "THE CAT SAT"
    assert decode("KATTEGAT:5") == "THE CAT SAT"  # a prefix's share is taken back when the word ends
    rng = np.random.default_rng(0)
    others = {"".join(rng.choice(list("BDFGJMNPQRVWXYZ"), 6)) for _ in range(300)}
    assert decode(*others) == "THE CAT SAT"  # 300 unrelated hotwords change nothing...
    assert decode(*others, "KAT:5") == "THE KAT SAT"  # ...and do not hide the one that matters
    # with an LM that lacks the word (and has no <unk>: P = 1e-100), the boost still works
    lm = load_lm(arpa(tmp_path / "lm.arpa", {"</s>": -1.0, "<s>": -99, "THE": -0.8, "CAT": -1.0, "SAT": -1.0}))
    assert BeamDecoder(ENGLISH, BeamSettings(), lm=lm).decode(log_probs).text == "THE CAT SAT"
    assert decode("KAT:12", lm=lm) == "THE KAT SAT"
    assert decode("KAT:0", lm=lm) == "THE CAT SAT"


def test_long_inputs_in_chunks_keep_memory_flat_and_give_the_same_result(monkeypatch):
    """Many frames through small node and record limits, so the tables are rebuilt, beams that
    disagree with the best one 100 frames back are dropped, and the agreed text leaves the search
    many times: fed in chunks or at once, the same result exactly; and the text and times of a
    search without limits."""
    rng = np.random.default_rng(3)
    log_probs = np.concatenate([speech_like(list(rng.choice(WORDS, 12)), rng, confusion=0.1) for _ in range(10)])
    settings = BeamSettings(beam_size=20)
    unlimited = BeamDecoder(ENGLISH, settings).decode(log_probs)
    monkeypatch.setattr(beam, "NODE_LIMIT", 300)
    monkeypatch.setattr(beam, "RECORD_LIMIT", 200)
    monkeypatch.setattr(beam, "HORIZON", 100)
    whole = BeamDecoder(ENGLISH, settings).stream()
    whole.feed(log_probs)
    expected = whole.finish()
    assert expected == unlimited
    search = BeamDecoder(ENGLISH, settings).stream()
    sizes = []
    for start in range(0, len(log_probs), 37):
        search.feed(log_probs[start:start + 37])
        sizes.append((search._count, search._record_count))
    assert search.finish() == expected and search.score == whole.score
    assert max(n for n, _ in sizes) < 300 + 20 * len(ENGLISH) and max(r for _, r in sizes) < 1000
    assert len(search._agreed) > 0.9 * len(expected.text)  # nearly all the text left the search on the way


def test_bad_lexicons_and_hotwords(tmp_path):
    with pytest.raises(LanguageModelError, match="no such lexicon"):
        read_lexicon(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("CAT\nDOG d o t\n")
    with pytest.raises(LanguageModelError, match="line 2: the spelling"):
        BeamDecoder(ENGLISH, BeamSettings(lexicon=str(bad)))
    bad.write_text("CAT\nNAÏVE\n")
    with pytest.raises(LanguageModelError, match="line 2: .*outside the model's vocabulary"):
        BeamDecoder(ENGLISH, BeamSettings(lexicon=str(bad)))
    assert parse_hotword("KAT:2.5") == ("KAT", 2.5) and parse_hotword("KAT") == ("KAT", beam.DEFAULT_BOOST)
    for text in ("KAT:x", "KAT:-1", "TWO WORDS", ":3"):
        with pytest.raises(ValueError):
            parse_hotword(text)


# ---------------------------------------------------------------------------- a small model, end to end

@pytest.fixture(scope="module")
def model(checkpoints):
    return wav2vec2.load_model(checkpoints["base"])


def test_transcribe_feeds_the_chunks_to_one_search(model, speechlike):
    decoder = BeamDecoder(model.vocab, BeamSettings(beam_size=16))
    chunked = transcribe(model, speechlike, chunk_length=1.0, stride=0.2, decoder=decoder)
    frames = torch.cat(list(chunk_logits(model, speechlike, chunk_length=1.0, stride=0.2)))
    expected = decoder.decode(frames.log_softmax(-1).numpy())  # the same frames, in one call
    assert chunked.text == expected.text and chunked.words == expected.words
    assert transcribe(model, speechlike).text == greedy_decode(*best_path(torch.from_numpy(
        log_probs_of(model, speechlike))), model.vocab).text  # and greedy stays greedy


def test_with_a_lexicon_and_an_lm_a_small_model_says_only_known_words(model, speechlike, tmp_path):
    words = ["THE", "MY", "IT", "TIME", "LET", "HIM", "MILL", "FILM", "LIFT", "TILT", "MUTE", "YET", "FIT", "HIT"]
    lm = tmp_path / "lm.arpa"
    arpa(lm, {"</s>": -1.0, "<s>": -99, "<unk>": -5.0, **{w: -1.2 for w in words}})
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("\n".join(words) + "\n")
    greedy_words = transcribe(model, speechlike).text.split()
    assert not set(greedy_words) <= set(words)
    said = transcribe(model, speechlike, decoder=BeamSettings(lm=str(lm), lexicon=str(lexicon))).text.split()
    assert said and set(said) <= set(words)


def test_evaluate_and_tune(model, speechlike, tmp_path):
    for i in range(3):
        write_audio(tmp_path / f"u{i}.wav", np.roll(speechlike, 4000 * i), 16000)
    (tmp_path / "dev.tsv").write_text("audio\ttext\n" + "".join(f"u{i}.wav\tTHE MILL IT\n" for i in range(3)))
    entries = load_data(tmp_path / "dev.tsv")
    lm = load_lm(arpa(tmp_path / "lm.arpa", {"</s>": -1.0, "<s>": -99, "<unk>": -3.0, "THE": -0.5, "MILL": -0.7,
                                             "IT": -0.6}))
    decoder = BeamDecoder(model.vocab, BeamSettings(beam_size=16), lm=lm, lexicon=["THE", "MILL", "IT"])
    result = tune(model, entries, decoder, [0.0, 3.0], [0.0, 2.0])
    assert [t[:2] for t in result.tried] == [(0.0, 0.0), (0.0, 2.0), (3.0, 0.0), (3.0, 2.0)]
    assert (result.lm_weight, result.word_score, result.wer) == min(result.tried, key=lambda t: t[2])
    assert result.greedy_wer == pytest.approx(evaluate(model, entries).wer)
    best = evaluate(model, entries, decoder=decoder.with_weights(result.lm_weight, result.word_score))
    assert best.wer == pytest.approx(result.wer)
    assert len({t[2] for t in result.tried}) > 1  # the weights matter


def test_streaming_finals_are_the_offline_beam_search_of_the_same_phrases(model):
    from wav2vec2.streaming import StreamingConfig, StreamingRecognizer

    rng = np.random.default_rng(0)
    phrases = [0.3 * rng.standard_normal(int(16000 * s)).astype(np.float32) for s in (1.3, 2.2)]
    silence = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([silence, phrases[0], silence, phrases[1], silence])
    config = StreamingConfig()
    decoder = BeamDecoder(model.vocab, BeamSettings(beam_size=8))
    recognizer = StreamingRecognizer(model, config, vad=lambda window: float(np.abs(window).max() > 0.01),
                                     decoder=decoder)
    events = []
    for start in range(0, len(audio), 1234):
        events += recognizer.feed(audio[start:start + 1234])
    finals = [e for e in events + recognizer.flush() if e.type == "final"]
    assert len(finals) == 2
    chunk_length, stride = config.chunking(model.config.samples_per_frame)
    for final in finals:
        piece = audio[round(final.start * 16000):round(final.end * 16000)]
        expected = transcribe(model, piece, chunk_length=chunk_length, stride=stride, decoder=decoder)
        assert final.text == expected.text and final.text
        assert [(w.text, w.start) for w in final.words] == [(w.text, pytest.approx(w.start + final.start, abs=2e-3))
                                                            for w in expected.words]


# ---------------------------------------------------------------------------- the command

def run(capsys, *args) -> tuple[int, str, str]:
    """`wav2vec2 ARGS` in this process (cli.main, as the command runs it): exit code, stdout, stderr."""
    from wav2vec2.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(result: tuple[int, str, str], *needles: str, code: int = 1) -> None:
    returncode, _, stderr = result
    assert returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wav2vec2: error: "), stderr
    assert all(n in lines[0] for n in needles), lines[0]


def test_the_command_decodes_with_a_beam_and_refuses_bad_files(checkpoints, speechlike, tmp_path, capsys):
    audio = write_audio(tmp_path / "a.wav", speechlike, 16000)
    lm = arpa(tmp_path / "lm.arpa", {"</s>": -1.0, "<s>": -99, "<unk>": -5.0, "THE": -0.5, "IT": -0.6})
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("THE\nIT\n")
    model = ("--model", checkpoints["base"])
    code, out, err = run(capsys, "transcribe", audio, *model, "--lm", lm, "--lexicon", lexicon, "--hotword", "IT:2")
    assert code == 0, err
    assert out.split() and set(out.split()) <= {"THE", "IT"}
    one_line_error(run(capsys, "transcribe", audio, *model, "--lm", tmp_path / "missing.arpa"), "missing.arpa")
    broken = tmp_path / "broken.arpa"
    broken.write_text(lm.read_text().replace("ngram 1=5", "ngram 1=7"))
    (tmp_path / "dev.tsv").write_text(f"audio\ttext\n{audio}\tTHE IT\n")
    one_line_error(run(capsys, "evaluate", "--manifest", tmp_path / "dev.tsv", *model, "--lm", broken), "broken.arpa")
    one_line_error(run(capsys, "transcribe", audio, *model, "--lexicon", tmp_path / "none.txt"), "none.txt")
    (tmp_path / "bad.txt").write_text("THE\nNAÏVE\n")
    one_line_error(run(capsys, "transcribe", audio, *model, "--lexicon", tmp_path / "bad.txt"), "bad.txt, line 2")
    one_line_error(run(capsys, "transcribe", audio, *model, "--decoder", "greedy", "--lm", lm), "--decoder beam",
                   code=2)
    one_line_error(run(capsys, "transcribe", audio, *model, "--hotword", "NAÏVE"), "outside", code=2)
    assert run(capsys, "transcribe", audio, *model, "--hotword", "IT:lots")[0] == 2
    code, out, err = run(capsys, "lm", "tune", *model, "--lm", lm, "--manifest", tmp_path / "dev.tsv",
                         "--lm-weights", "0", "1", "--word-scores", "0", "--beam-size", "8")
    assert code == 0, err
    assert len(out.splitlines()) == 3 and out.splitlines()[-1].startswith("best: --lm-weight ")
    one_line_error(run(capsys, "lm", "tune", *model, "--lm", broken, "--manifest", tmp_path / "dev.tsv"),
                   "broken.arpa")
