"""Build an N-way K-shot support folder (and a query folder) from Omniglot's images_evaluation.zip.

    python examples/make_support_folder.py ../shared/datasets/omniglot/images_evaluation.zip shots --ways 5 --shots 1 --queries 5

The PNGs are copied byte for byte, as they come in the official zip (105x105, 1-bit, black ink),
into ``shots/<alphabet>_<character>/`` and ``shots-query/<...>/``; characters never seen in
meta-training on images_background.
"""

from __future__ import annotations

import argparse
import random
import zipfile
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("zip", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    classes: dict[str, list[str]] = defaultdict(list)
    with zipfile.ZipFile(args.zip) as z:
        for name in z.namelist():
            if name.endswith(".png"):
                classes[name.rsplit("/", 1)[0]].append(name)
        rng = random.Random(args.seed)
        query_root = args.out.with_name(args.out.name + "-query")
        for cls in rng.sample(sorted(classes), args.ways):
            label = "_".join(cls.split("/")[-2:])
            files = rng.sample(sorted(classes[cls]), args.shots + args.queries)
            for root, chosen in ((args.out, files[: args.shots]), (query_root, files[args.shots :])):
                d = root / label
                d.mkdir(parents=True, exist_ok=True)
                for f in chosen:
                    (d / f.rsplit("/", 1)[1]).write_bytes(z.read(f))
    print(f"support: {args.out}  query: {query_root}")


if __name__ == "__main__":
    main()
