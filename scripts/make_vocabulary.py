"""Regenerate ``imgclust/data/vocabulary.txt``, the built-in vocabulary of cluster names.

Source: the 11,821 classes of ImageNet-12k (timm's subset of ImageNet-21k/22k, ``imagenet12k_synsets.txt``), each
named by the first lemma of its WordNet 3.0 synset (``imagenet_synset_to_lemma.txt``), both shipped with timm
(Apache-2.0). Names are WordNet's (WordNet 3.0 licence: free to use, copy, modify and distribute, with its copyright
notice, which the file's header carries). Duplicate names (case-insensitive) are kept once, in ImageNet order.

    python scripts/make_vocabulary.py
"""

from pathlib import Path

import timm

INFO = Path(timm.__file__).parent / "data" / "_info"
OUT = Path(__file__).resolve().parents[1] / "imgclust" / "data" / "vocabulary.txt"
HEADER = """\
# imgclust's built-in vocabulary of cluster names: 10,951 nouns for visual things, one per line.
# Source: the classes of ImageNet-12k (timm's imagenet12k_synsets.txt, a subset of ImageNet-21k), each named by the
# first lemma of its WordNet 3.0 synset (timm's imagenet_synset_to_lemma.txt); made by scripts/make_vocabulary.py.
# Licence of the names: WordNet 3.0 licence. "WordNet 3.0 Copyright 2006 by Princeton University. All rights
# reserved. Permission to use, copy, modify and distribute this software and database and its documentation for
# any purpose and without fee or royalty is hereby granted, provided that you agree to comply with the following
# copyright notice and statements, including the disclaimer, and that the same appear on ALL copies of the
# software, database and documentation, including modifications that you make for internal use or for
# distribution. THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS
# OR WARRANTIES, EXPRESS OR IMPLIED. The name of Princeton University or Princeton may not be used in advertising
# or publicity pertaining to distribution of the software and/or database. Title to copyright in this software,
# database and any associated documentation shall at all times remain with Princeton University and LICENSEE
# agrees to preserve same." The class list: timm, Apache-2.0.
"""


def main() -> None:
    lemmas = dict(line.rstrip("\n").split("\t", 1) for line in (INFO / "imagenet_synset_to_lemma.txt").open())
    names, seen = [], set()
    for synset in (INFO / "imagenet12k_synsets.txt").read_text().split():
        name = lemmas[synset].split(",")[0].strip()
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
    OUT.write_text(HEADER + "".join(f"{n}\n" for n in names), encoding="utf-8")
    print(f"wrote {len(names)} names to {OUT}")


if __name__ == "__main__":
    main()
