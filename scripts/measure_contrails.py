#!/usr/bin/env python
"""Measure real contrails' signature, the source of segladder/data/inject.py's constants.

    python scripts/measure_contrails.py ROOT [ROOT ...]

Each contrail is an 8-connected component (≥ 10 px) of a labelled record's pixel mask at the labelled
frame; its cooling per band is the median of a ring 2–4 px outside it minus the median of its pixels.
Prints the band-14 cooling quantiles and each band's share of band 14's cooling, as JSON.
"""

from __future__ import annotations

import json
import sys

from segladder.data.contrails import discover_records
from segladder.data.inject import measure_signature


def main(roots: list[str]) -> int:
    if not roots:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    refs = [
        r
        for root in roots
        for s in ("train", "validation")
        for r in discover_records(root, s, required=False)
    ]
    print(json.dumps(measure_signature(refs).as_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
