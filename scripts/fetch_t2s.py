#!/usr/bin/env python3
"""Builds src/t2s_table.txt, the traditional→simplified character table that
cws reads text through (src/script.rs), from OpenCC's TSCharacters.txt.

Regenerate (deterministic, overwrites src/t2s_table.txt):
    /work/pyenv/bin/python scripts/fetch_t2s.py [--data ../shared/data] [--cache DIR]

Source: OpenCC's character table `opencc/dictionary/TSCharacters.txt` as shipped
in the PyPI wheel opencc_python_reimplemented-0.1.7-py2.py3-none-any.whl
(Apache License 2.0). The wheel is fetched with `pip download` into a cache
folder outside the repository (default ~/.cache/cws-t2s, or --cache) and
checked against a fixed SHA-256 before anything is read from it.

Conversion:
- each line `TRAD<TAB>SIMP [SIMP...]` gives one pair `TRAD SIMP`, taking
  OpenCC's first candidate; only single characters to single characters;
- identity pairs (first candidate equal to the source) are dropped;
- exclusion rule: a source character is dropped when it occurs anywhere in the
  simplified reference texts: the PKU and MSR training samples
  (train/pku_10pct.utf8, train/msr_10pct.utf8), the SIGHAN 2005 test texts
  (sighan2005/pku_test.utf8, msr_test.utf8) and the full training word lists
  (sighan2005/pku_training_words.utf8, msr_training_words.utf8), or in a
  bundled model's vocabulary (models/*/vocab.txt). These are simplified text
  throughout, so a character seen there is in simplified use (乾隆, 手塚,
  哪吒, ...) and remapping it would change what simplified input means. The
  characters dropped, with their counts, are listed in the table's header.
  A source character that is also some pair's simplified form (苧: 薴→苧,
  苧→苎) is dropped too: it is simplified text, and one lookup then always
  reaches the simplified form.
"""

import argparse
import collections
import hashlib
import os
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
OUT = os.path.join(ROOT, "src", "t2s_table.txt")

PACKAGE = "opencc-python-reimplemented==0.1.7"
WHEEL = "opencc_python_reimplemented-0.1.7-py2.py3-none-any.whl"
SHA256 = "41b3b92943c7bed291f448e9c7fad4b577c8c2eae30fcfe5a74edf8818493aa6"
MEMBER = "opencc/dictionary/TSCharacters.txt"

REFERENCE = [
    "train/pku_10pct.utf8",
    "train/msr_10pct.utf8",
    "sighan2005/pku_test.utf8",
    "sighan2005/msr_test.utf8",
    "sighan2005/pku_training_words.utf8",
    "sighan2005/msr_training_words.utf8",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(cache):
    """The verified wheel's path, downloading it with pip unless cached."""
    os.makedirs(cache, exist_ok=True)
    wheel = os.path.join(cache, WHEEL)
    if not os.path.exists(wheel):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps",
             "--only-binary", ":all:", PACKAGE, "-d", cache],
            check=True,
        )
    got = sha256(wheel)
    if got != SHA256:
        sys.exit(f"{wheel}: SHA-256 {got}, expected {SHA256}")
    return wheel


def opencc_pairs(wheel):
    """(trad, first simplified candidate) for single-char, non-identity lines."""
    with zipfile.ZipFile(wheel) as z:
        text = z.read(MEMBER).decode("utf-8")
    pairs = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        src, dst = line.split("\t")
        first = dst.split(" ")[0]
        if len(src) == 1 and len(first) == 1 and src != first:
            pairs[src] = first
    return pairs


def simplified_use(data, sources):
    """How often each source character occurs in the simplified references."""
    counts = collections.Counter()
    for rel in REFERENCE:
        path = os.path.join(data, rel)
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: the exclusion rule needs it (--data)")
        with open(path, encoding="utf-8") as f:
            counts.update(c for c in f.read() if c in sources)
    models = os.path.join(ROOT, "models")
    for name in sorted(os.listdir(models)):
        vocab = os.path.join(models, name, "vocab.txt")
        if os.path.exists(vocab):
            with open(vocab, encoding="utf-8") as f:
                counts.update(t for t in f.read().splitlines() if t in sources)
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/cws-t2s"))
    args = ap.parse_args()

    pairs = opencc_pairs(fetch_wheel(args.cache))
    used = simplified_use(args.data, pairs)
    # A source that is another source's simplified form is simplified text too.
    targets = set(pairs.values())
    table = {t: s for t, s in pairs.items() if t not in used and t not in targets}
    also_target = "".join(sorted(t for t in pairs if t in targets and t not in used))

    dropped = " ".join(f"{c}({n})" for c, n in used.most_common())
    header = [
        "# Traditional → simplified characters, one `TRAD SIMP` pair a line.",
        "# Generated by scripts/fetch_t2s.py; do not edit by hand.",
        f"# Source: OpenCC's {MEMBER}, from the PyPI wheel",
        f"# {WHEEL}",
        f"# (SHA-256 {SHA256}).",
        "# OpenCC (https://github.com/BYVoid/OpenCC), Copyright Carbo Kuo (BYVoid)",
        "# and contributors, is licensed under the Apache License, Version 2.0",
        "# (http://www.apache.org/licenses/LICENSE-2.0).",
        "# Modified: single characters only, OpenCC's first candidate, identity",
        "# pairs dropped; characters in simplified use dropped (count in the",
        f"# simplified references): {dropped}; dropped as another character's",
        f"# simplified form: {also_target}. {len(table)} pairs.",
    ]
    body = [f"{t} {s}" for t, s in sorted(table.items())]
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(header + body) + "\n")
    print(f"{OUT}: {len(table)} pairs; dropped {dropped}; {also_target}")


if __name__ == "__main__":
    main()
