#!/usr/bin/env bash
# Fetches the general word list the bundled models read (`general_lexicon` in
# configs/default-*.toml): the dictionary inside the released `jieba` package,
# version 0.42.1, from the Python Package Index (MIT licence; jieba's authors,
# https://github.com/fxsjy/jieba). The package archive is checked against its
# SHA-256 and its jieba/dict.txt (349,046 lines `WORD FREQUENCY TAG`) is
# written as `WORD FREQUENCY` lines, the word-list format cws reads.
#
#   scripts/fetch_jieba_dict.sh            # -> $HOME/.cache/cws/jieba-0.42.1.words
#   scripts/fetch_jieba_dict.sh OUT_FILE
#
# Nothing of it enters the repository: the models keep only 64-bit hashes of
# the words (general_lexicon.safetensors).
set -euo pipefail

version=0.42.1
sha256=055ca12f62674fafed09427f176506079bc135638a14e23e25be909131928db2
cache="$HOME/.cache/cws"
out="${1:-$cache/jieba-$version.words}"
archive="$cache/jieba-$version.tar.gz"

mkdir -p "$cache" "$(dirname "$out")"
if [ ! -f "$archive" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary :all: \
        "jieba==$version" -d "$tmp"
    mv "$tmp/jieba-$version.tar.gz" "$archive"
fi
echo "$sha256  $archive" | sha256sum --check --quiet || {
    echo "error: $archive does not have the SHA-256 of jieba $version's release; delete it and rerun" >&2
    exit 1
}
tar -xzOf "$archive" "jieba-$version/jieba/dict.txt" |
    awk 'NF != 3 { printf "error: jieba dict.txt line %d has %d fields\n", NR, NF > "/dev/stderr"; exit 1 }
         { print $1, $2 }' >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $(wc -l <"$out") words to $out"
