"""The text for a language model of the synthetic corpus: every WordNet sentence but those scored.

    .venv/bin/python recipes/synthetic/lm_text.py --data data/synthetic --out data/synthetic/lm.txt
    .venv/bin/wav2vec2 lm build --text data/synthetic/lm.txt --order 4 --model demo --out data/synthetic/lm.arpa

The sentences are those make_corpus.py draws from (one transcript per line); the transcripts of
`dev.tsv`, `test.tsv` and `test_voices.tsv` are left out, so that an LM built from this text has
never seen a sentence it is tuned or scored on (an LM that knows the dev sentences by heart would
be tuned to trust itself far too much).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from make_corpus import read_sentences

from wav2vec2.manifest import read_manifest

HELD_OUT = ("dev.tsv", "test.tsv", "test_voices.tsv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the corpus folder of make_corpus.py")
    parser.add_argument("--out", type=Path, required=True, help="the text file to write")
    args = parser.parse_args()
    held_out = {entry.text for name in HELD_OUT for entry in read_manifest(args.data / name)}
    kept = [s.transcript for s in read_sentences() if s.transcript not in held_out]
    args.out.write_text("".join(line + "\n" for line in kept))
    print(f"{args.out}: {len(kept)} sentences ({len(held_out)} dev and test transcripts left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
