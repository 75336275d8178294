"""Procedural, offline datasets for gan-scripts: every script's main job runs without downloads.

Three generators, each deterministic for a seed and returning uint8 tensors:

- letters(chars, n_per_char, image_size, seed): handwritten-looking characters rendered from the
  fonts matplotlib ships, with random affine jitter, stroke width and elastic distortion.
- scenes(n, image_size, seed): iCLEVR-like multi-object scenes (8 colours x 3 shapes, 1-3 objects).
- faces(n, image_size, seed): cartoon faces with known hair and eye colours.

Command line (writes the same on-disk formats as the real datasets, for testing the real loaders):
    python synthetic.py letters --out DIR      # DIR/Train/<emnist label>/*.jpeg, the AIML431 layout
    python synthetic.py objects --out DIR      # i-CLEVR: images + objects.json, train.json, test.json, new_test.json
    python synthetic.py faces --out DIR        # MLDS: images/<id>.jpg + tags.csv
"""

import argparse
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


# ===========================================================================
# Letters
# ===========================================================================

# (letters section: filled in by the letters work)


# ===========================================================================
# Object scenes (iCLEVR-like)
# ===========================================================================

# (scenes section: filled in by the objects work)


# ===========================================================================
# Anime-like faces
# ===========================================================================

# (faces section: filled in by the faces work)


# ===========================================================================
# Command line
# ===========================================================================
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind, writer in WRITERS.items():
        p = sub.add_parser(kind, help=writer.__doc__.strip().splitlines()[0])
        p.add_argument("--out", required=True, help="folder to write the dataset to")
        p.add_argument("--n", type=int, default=None, help="how many images/scenes (default: the writer's)")
        p.add_argument("--image-size", type=int, default=None, help="stored image size (default: the real format's)")
        p.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in (("n", args.n), ("image_size", args.image_size)) if v is not None}
    WRITERS[args.kind](args.out, seed=args.seed, **kwargs)
    print(f"wrote {args.kind} to {args.out}")


# Each section registers its on-disk writer here: WRITERS["objects"] = write_iclevr, ...
WRITERS = {}

if __name__ == "__main__":
    main()
