"""Procedural, offline datasets for gan-scripts: every script's main job runs without downloads.

Three generators, each deterministic for a seed and returning uint8 tensors:

- letters(chars, n_per_char, image_size, seed): handwritten-looking characters rendered from the
  fonts matplotlib ships, with random affine jitter, stroke width and elastic distortion, framed
  as EMNIST.
- scenes(n, image_size, seed): iCLEVR-like multi-object scenes (8 colours x 3 shapes, 1-3 objects).
- faces(n, image_size, seed): cartoon faces with known hair and eye colours.

Command line (writes the same on-disk formats as the real datasets, for testing the real loaders):
    python synthetic.py letters --out DIR      # DIR/Train/<emnist label>/*.jpeg, the AIML431 layout
    python synthetic.py objects --out DIR      # i-CLEVR: images + objects.json, train.json,
                                               # test.json, new_test.json
    python synthetic.py faces --out DIR        # MLDS: images/<id>.jpg + tags.csv
"""

import argparse
import functools
import hashlib
import importlib.metadata
import importlib.util
import math
import os
import shutil
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from image_io import EMNIST_BALANCED  # index = EMNIST-Balanced label, as in the real folders


# ===========================================================================
# Letters
# ===========================================================================

# Handwriting-like characters for the EMNIST scripts. Each font glyph is thinned to its centre line
# once (kept in memory and on disk: _glyph_cache_folder), and every EMNIST-Balanced class also has
# hand-drawn stroke forms (most images use them); every image then redraws a centre line with a
# round pen of random width after a random affine map and a smooth elastic warp, so all fonts end up
# with pen-like strokes (the hand-drawn forms' corners are rounded in half their copies, as a quick
# hand rounds them). Then EMNIST's own preparation: a Gaussian blur, the ink's bounding box centred
# and scaled to fill the image less a 2/28 border, intensities stretched to 0-255. All per-image
# work is a few batched tensor operations: 10,000 images take seconds on one CPU core.

# what letters() can draw
LETTER_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# The text fonts matplotlib ships (its symbol fonts, cmsy10, cmex10 and the STIX size variants,
# are left out).
LETTER_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf", "cmmi10.ttf", "cmti10.ttf",
)
GLYPH_CANVAS = 64  # glyphs are cached on a 64x64 canvas,
GLYPH_SIDE = 52    # centred, the longer side of their ink 52 px (81%, as EMNIST), leaving room
                   # for the pen

_FONTS = {}   # font file name -> matplotlib FT2Font, opened once
_GLYPHS = {}  # char -> (distance maps (glyphs, canvas, canvas), how many are hand-drawn)


def _font_path(name):
    # matplotlib.get_data_path() without importing matplotlib: a warm cache only hashes the fonts
    package = os.path.dirname(importlib.util.find_spec("matplotlib").origin)
    return os.path.join(package, "mpl-data", "fonts", "ttf", name)


def _font(name):
    if name not in _FONTS:
        from matplotlib.ft2font import FT2Font
        _FONTS[name] = FT2Font(_font_path(name))
    return _FONTS[name]


def _render_glyph(font, char):
    """One glyph's ink (0..1) centred on the canvas, its longer side GLYPH_SIDE px; None if the
    font lacks it."""
    if font.get_char_index(ord(char)) == 0:
        return None
    font.set_size(128, 72)  # render large, then shrink: smooth outlines
    font.set_text(char, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    ink = torch.from_numpy(np.asarray(font.get_image(), dtype=np.float32) / 255)
    rows, cols = (ink > 0.1).any(1).nonzero(), (ink > 0.1).any(0).nonzero()
    if len(rows) == 0:
        return None
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = GLYPH_SIDE / max(ink.shape)
    h, w = max(1, round(ink.shape[0] * scale)), max(1, round(ink.shape[1] * scale))
    ink = F.interpolate(ink[None, None], size=(h, w), mode="bilinear", antialias=True,
                        align_corners=False)[0, 0]
    canvas = torch.zeros(GLYPH_CANVAS, GLYPH_CANVAS)
    top, left = (GLYPH_CANVAS - h) // 2, (GLYPH_CANVAS - w) // 2
    canvas[top:top + h, left:left + w] = ink.clamp(0, 1)
    return canvas


def _thinning_tables():
    """Zhang & Suen (1984) thinning as two lookup tables:
    8-neighbour code -> may this ink pixel go?"""
    tables = np.zeros((2, 256), dtype=bool)
    for code in range(256):
        # neighbours clockwise from north: P2 .. P9 in the paper
        n = [(code >> i) & 1 for i in range(8)]
        crossings = sum(n[i] == 0 and n[(i + 1) % 8] == 1 for i in range(8))
        # not an end point, and removing it keeps the line connected
        removable = 2 <= sum(n) <= 6 and crossings == 1
        # south-east pass
        tables[0, code] = removable and n[0] * n[2] * n[4] == 0 and n[2] * n[4] * n[6] == 0
        # north-west pass
        tables[1, code] = removable and n[0] * n[2] * n[6] == 0 and n[0] * n[4] * n[6] == 0
    return tables


def _centre_lines(ink):
    """Thin boolean glyphs (G, H, W) to 1-px centre lines, peeling all glyphs at once until none
    changes."""
    x = np.pad(ink, ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
    tables = _thinning_tables()
    active = np.arange(len(x))
    while len(active):
        changed = np.zeros(len(active), dtype=bool)
        for table in tables:
            p = x[active]
            code = (p[:, :-2, 1:-1] | p[:, :-2, 2:] << 1 | p[:, 1:-1, 2:] << 2
                    | p[:, 2:, 2:] << 3 | p[:, 2:, 1:-1] << 4 | p[:, 2:, :-2] << 5
                    | p[:, 1:-1, :-2] << 6 | p[:, :-2, :-2] << 7)
            delete = table[code] & (p[:, 1:-1, 1:-1] > 0)
            p[:, 1:-1, 1:-1][delete] = 0
            x[active] = p
            changed |= delete.any((1, 2))
        active = active[changed]
    return x[:, 1:-1, 1:-1] > 0


def _arc(cx, cy, rx, ry, start, end, points=24):
    """Points of an elliptical arc from angle `start` to `end`
    (degrees, 0 = right, 90 = down: y points down)."""
    t = np.radians(np.linspace(start, end, points))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


def _bowl(x0, top, bottom, reach, start=-90, end=90):
    """Points of a half-ellipse bulging right from (x0, top) to (x0, bottom),
    its rightmost x = reach."""
    return _arc(x0, (top + bottom) / 2, reach - x0, (bottom - top) / 2, start, end)


def _loop(cx, cy, rx, ry, start=0):
    """A closed ellipse, drawn from angle `start`
    (a pen rarely closes a loop exactly: the jitter takes care)."""
    return _arc(cx, cy, rx, ry, start, start + 360, 32)


# Hand-drawn stroke forms (polylines in a unit box, x right, y down) for every EMNIST-Balanced
# class: font glyphs alone are too regular to cover handwriting, and a classifier that saw
# hand-drawn strokes for some characters only learns "hand-drawn = those characters" (real B's then
# read as R or 8). Handwriting's own habits are here: A's crossbar overshooting the legs, B's
# detached or open stem, one-stroke R and P, open-top 4.
# Each form is drawn in HAND_VARIANTS jittered copies, which join the font glyphs.
HAND_FORMS = {
    "0": [[_loop(0.5, 0.5, 0.4, 0.5, 270)], [_loop(0.5, 0.5, 0.35, 0.5, 240) + [(0.75, 0.1)]]],
    "1": [[[(0.5, 0), (0.5, 1)]],
          [[(0.2, 0.25), (0.6, 0), (0.6, 1)]],
          [[(0.25, 0.2), (0.55, 0), (0.55, 1)], [(0.25, 1), (0.85, 1)]]],
    "2": [[_arc(0.5, 0.3, 0.38, 0.3, 190, 380) + [(0.1, 1), (0.9, 1)]],
          [_arc(0.5, 0.28, 0.4, 0.28, 200, 400)
           + [(0.15, 0.95), (0.3, 0.85), (0.5, 1), (0.9, 0.95)]]],
    "3": [[_arc(0.45, 0.25, 0.38, 0.25, 200, 450) + _arc(0.45, 0.75, 0.42, 0.25, 270, 500)[1:]],
          [[(0.1, 0), (0.85, 0), (0.4, 0.4)] + _arc(0.45, 0.7, 0.42, 0.3, 270, 510)]],
    "4": [[[(0.7, 1), (0.7, 0), (0.05, 0.7), (0.95, 0.7)]],
          [[(0.3, 0), (0.1, 0.6), (0.9, 0.6)], [(0.7, 0.25), (0.7, 1)]]],
    "5": [[[(0.85, 0), (0.2, 0), (0.15, 0.45)] + _arc(0.48, 0.7, 0.4, 0.3, 215, 500)],
          [[(0.2, 0), (0.15, 0.45)] + _arc(0.48, 0.7, 0.4, 0.3, 215, 500), [(0.2, 0), (0.85, 0)]]],
    "6": [[[(0.75, 0), (0.35, 0.3), (0.12, 0.7)] + _loop(0.5, 0.72, 0.38, 0.28, 180)],
          [_arc(0.5, 0.5, 0.4, 0.5, 300, 180) + _arc(0.5, 0.72, 0.4, 0.28, 180, 520)]],
    "7": [[[(0.1, 0), (0.9, 0), (0.35, 1)]],
          [[(0.1, 0.05), (0.9, 0), (0.4, 1)], [(0.35, 0.5), (0.85, 0.5)]]],
    "8": [[_arc(0.5, 0.25, 0.3, 0.25, 330, 130) + _arc(0.5, 0.75, 0.38, 0.25, 290, 600)
           + [(0.75, 0.4), (0.8, 0.12)]],
          [_arc(0.5, 0.22, 0.25, 0.22, 0, -230) + _arc(0.5, 0.72, 0.4, 0.28, 280, 620)[1:]
           + [(0.65, 0.4), (0.75, 0.2)]],
          # one stroke, crossing itself in the middle (a B's bowls meet at its stem)
          [_arc(0.55, 0.25, 0.3, 0.25, 300, 120) + [(0.65, 0.55), (0.85, 0.75)]
           + _arc(0.5, 0.75, 0.35, 0.25, 0, 250) + [(0.6, 0.45), (0.8, 0.15)]]],
    "9": [[_loop(0.5, 0.3, 0.38, 0.3, 0) + [(0.85, 1)]],
          [_loop(0.45, 0.3, 0.38, 0.3, 0) + _arc(0.55, 0.3, 0.3, 0.7, 0, 110)]],
    "A": [
        [[(0.1, 1), (0.5, 0), (0.9, 1)], [(0.28, 0.62), (0.72, 0.62)]],
        [[(0.15, 1), (0.45, 0.03), (0.55, 0.03), (0.85, 1)], [(0.05, 0.6), (0.95, 0.56)]],
        [[(0.05, 0.95), (0.5, 0), (0.8, 0.9), (0.95, 1)], [(0.3, 0.55), (0.75, 0.6)]],
        # crossbar drawn without lifting the pen
        [[(0.1, 1), (0.5, 0), (0.9, 1), (0.75, 0.65), (0.25, 0.65)]],
        # round top
        [[(0.1, 1)] + _arc(0.5, 0.4, 0.35, 0.4, 180, 360) + [(0.9, 1)], [(0.1, 0.6), (0.9, 0.6)]],
        [[(0.05, 1), (0.6, 0), (0.75, 1)], [(0.0, 0.65), (0.95, 0.6)]],  # leaning, one leg upright
        [[(0.25, 0.65), (0.95, 0.6)], [(0.1, 1), (0.55, 0), (0.85, 1)]],  # bar first, from the left
        # legs almost parallel
        [[(0.2, 1), (0.4, 0.05), (0.5, 0), (0.6, 0.05), (0.8, 1)], [(0.25, 0.55), (0.75, 0.55)]],
        [[(0.1, 1), (0.5, 0), (0.9, 1)], [(0.3, 0.45), (0.7, 0.45)]],  # high crossbar
    ],
    "B": [
        [[(0.2, 0), (0.2, 1)], _bowl(0.2, 0, 0.48, 0.75) + _bowl(0.2, 0.48, 1, 0.85)[1:]],
        [[(0.15, 0.02), (0.2, 1)], _bowl(0.15, 0.02, 0.42, 0.7) + _bowl(0.17, 0.42, 1, 0.9)[1:]],
        # stem apart: "13"
        [[(0.08, 0), (0.1, 1)], _bowl(0.25, 0, 0.5, 0.8) + _bowl(0.25, 0.5, 1, 0.85)[1:]],
        # one stroke
        [[(0.2, 1), (0.2, 0)] + _bowl(0.2, 0, 0.5, 0.8)[1:] + _bowl(0.2, 0.5, 1, 0.9)[1:]],
        [[(0.1, 0), (0.1, 1)], _bowl(0.1, 0, 0.45, 0.85) + _bowl(0.1, 0.45, 1, 1.0)[1:]],  # wide
        # small top bowl
        [[(0.15, 0), (0.15, 1)], _bowl(0.15, 0, 0.38, 0.6) + _bowl(0.15, 0.38, 1, 0.95)[1:]],
        # leaning stem
        [[(0.3, 0), (0.1, 1)], _bowl(0.3, 0, 0.5, 0.95) + _bowl(0.2, 0.5, 1, 0.95)[1:]],
        [_arc(0.45, 0.5, 0.3, 0.5, 250, 110),  # bent stem
         _bowl(0.3, 0.02, 0.5, 0.85) + _bowl(0.3, 0.5, 0.98, 0.95)[1:]],
        # bowls first, overshooting the stem
        [[(0.1, 0.05), (0.25, 0)] + _bowl(0.25, 0, 0.48, 0.85)[1:] + [(0.4, 0.48)]
         + _bowl(0.25, 0.48, 1, 0.95)[1:] + [(0.15, 1)], [(0.2, 0), (0.2, 1)]],
        # one stroke with round corners, up the stem and over:
        # narrow ones read as 8 unless seen here
        [[(0.2, 1), (0.15, 0.25)] + _arc(0.45, 0.25, 0.3, 0.25, 180, 450)[1:] + [(0.25, 0.5)]
         + _arc(0.45, 0.75, 0.35, 0.25, 250, 480)[1:]],
        [[(0.3, 0.95), (0.2, 0.1), (0.05, 0.05)],
         _arc(0.4, 0.25, 0.35, 0.22, 200, 450) + _arc(0.4, 0.72, 0.4, 0.27, 260, 490)[1:]],
        # pointed bowls
        [[(0.2, 0), (0.2, 1)], [(0.2, 0), (0.75, 0.2), (0.25, 0.48), (0.9, 0.75), (0.2, 1)]],
        # lower bowl past the stem
        [[(0.25, 0), (0.25, 1)], _bowl(0.25, 0, 0.4, 0.6) + _bowl(0.1, 0.4, 1, 1.0)[1:]],
        # the stem starts with a hook to the left
        [_arc(0.3, 0.15, 0.15, 0.15, 180, 360) + [(0.3, 1)],
         _bowl(0.3, 0, 0.45, 0.8) + _bowl(0.3, 0.45, 1, 0.95)[1:]],
        # bowls from a tail left of the stem, ending past it
        [[(0.0, 0.15), (0.15, 0.02), (0.3, 0)] + _bowl(0.3, 0, 0.5, 0.8)[1:]
         + _bowl(0.3, 0.5, 1, 0.9)[1:] + [(0.05, 0.97)], [(0.3, 0), (0.28, 1)]],
        [[(0.2, 1), (0.25, 0)] + _bowl(0.25, 0, 0.45, 0.75)[1:] + [(0.08, 0.5), (0.3, 0.53)]
         + _bowl(0.25, 0.5, 1, 0.9)[1:]],  # one stroke, a small loop where the bowls meet
        [[(0.25, 0), (0.25, 1)],
         _bowl(0.25, 0, 0.48, 0.8) + _bowl(0.25, 0.48, 1, 0.9)[1:] + [(0.05, 0.95)]],
    ],
    "C": [[_arc(0.55, 0.5, 0.45, 0.5, 320, 40)], [_arc(0.5, 0.5, 0.42, 0.5, 300, 70)]],
    "D": [[[(0.15, 0), (0.15, 1)], _bowl(0.15, 0, 1, 0.9)],
          [[(0.15, 1), (0.15, 0)] + _bowl(0.15, 0, 1, 0.9)[1:]]],
    "E": [[[(0.85, 0), (0.15, 0), (0.15, 1), (0.85, 1)], [(0.15, 0.5), (0.7, 0.5)]],
          [[(0.15, 0), (0.15, 1)], [(0.15, 0), (0.85, 0)], [(0.15, 0.5), (0.7, 0.5)],
           [(0.15, 1), (0.85, 1)]]],
    "F": [[[(0.85, 0), (0.15, 0), (0.15, 1)], [(0.15, 0.5), (0.7, 0.5)]],
          [[(0.15, 0), (0.15, 1)], [(0.15, 0), (0.85, 0)], [(0.15, 0.45), (0.65, 0.45)]]],
    "G": [[_arc(0.5, 0.5, 0.42, 0.5, 310, 0) + [(0.92, 0.55), (0.55, 0.55)]],
          [_arc(0.5, 0.5, 0.42, 0.5, 300, 20) + [(0.9, 0.6), (0.9, 1)]]],
    "H": [[[(0.15, 0), (0.15, 1)], [(0.85, 0), (0.85, 1)], [(0.15, 0.5), (0.85, 0.5)]],
          [[(0.15, 0), (0.15, 1)], [(0.15, 0.55), (0.85, 0.45)], [(0.85, 0), (0.85, 1)]]],
    "I": [[[(0.5, 0), (0.5, 1)]],
          [[(0.2, 0), (0.8, 0)], [(0.5, 0), (0.5, 1)], [(0.2, 1), (0.8, 1)]]],
    "J": [[[(0.75, 0), (0.75, 0.7)] + _arc(0.45, 0.7, 0.3, 0.3, 0, 180)],
          [[(0.3, 0), (0.95, 0)], [(0.7, 0), (0.7, 0.7)] + _arc(0.4, 0.7, 0.3, 0.3, 0, 170)]],
    "K": [[[(0.15, 0), (0.15, 1)], [(0.85, 0), (0.15, 0.55), (0.85, 1)]],
          [[(0.15, 0), (0.15, 1)], [(0.85, 0), (0.15, 0.55)], [(0.35, 0.45), (0.85, 1)]]],
    "L": [[[(0.15, 0), (0.15, 1), (0.85, 1)]], [[(0.2, 0), (0.15, 1)], [(0.15, 1), (0.85, 0.95)]]],
    "M": [[[(0.1, 1), (0.15, 0), (0.5, 0.6), (0.85, 0), (0.9, 1)]],
          [[(0.05, 1), (0.25, 0), (0.5, 0.7), (0.75, 0), (0.95, 1)]]],
    "N": [[[(0.15, 1), (0.15, 0), (0.85, 1), (0.85, 0)]],
          [[(0.15, 0), (0.15, 1)], [(0.15, 0), (0.85, 1), (0.85, 0)]]],
    "O": [[_loop(0.5, 0.5, 0.42, 0.5, 270)], [_loop(0.5, 0.5, 0.4, 0.5, 300)]],
    "P": [[[(0.15, 0), (0.15, 1)], _bowl(0.15, 0, 0.55, 0.85)],
          [[(0.15, 1), (0.15, 0)] + _bowl(0.15, 0, 0.5, 0.85)[1:]]],
    "Q": [[_loop(0.5, 0.5, 0.42, 0.48, 270), [(0.6, 0.7), (0.95, 1.05)]],
          [_loop(0.5, 0.45, 0.4, 0.45, 270), [(0.45, 0.75), (0.9, 1)]]],
    "R": [[[(0.15, 0), (0.15, 1)], _bowl(0.15, 0, 0.5, 0.85), [(0.4, 0.5), (0.85, 1)]],
          [[(0.15, 1), (0.15, 0)] + _bowl(0.15, 0, 0.5, 0.8)[1:] + [(0.85, 1)]],
          [[(0.15, 1), (0.15, 0)] + _bowl(0.15, 0, 0.55, 0.9)[1:]
           + [(0.5, 0.55), (0.75, 0.9), (0.9, 1)]]],
    "S": [[_arc(0.5, 0.27, 0.38, 0.27, 340, 90) + _arc(0.5, 0.73, 0.4, 0.27, 270, 520)[1:]],
          [_arc(0.55, 0.25, 0.38, 0.25, 330, 110) + _arc(0.45, 0.72, 0.42, 0.28, 250, 500)[1:]]],
    "T": [[[(0.05, 0), (0.95, 0)], [(0.5, 0), (0.5, 1)]],
          [[(0.05, 0.05), (0.95, 0)], [(0.45, 0), (0.55, 1)]]],
    "U": [[[(0.15, 0), (0.15, 0.65)] + _arc(0.5, 0.65, 0.35, 0.35, 180, 0) + [(0.85, 0)]],
          [[(0.15, 0), (0.15, 0.65)] + _arc(0.5, 0.65, 0.35, 0.35, 180, 0)
           + [(0.85, 0), (0.85, 1)]]],
    "V": [[[(0.1, 0), (0.5, 1), (0.9, 0)]], [[(0.05, 0), (0.45, 1), (0.95, 0)]]],
    "W": [[[(0.05, 0), (0.27, 1), (0.5, 0.3), (0.73, 1), (0.95, 0)]],
          [[(0.05, 0), (0.2, 1), (0.5, 0), (0.8, 1), (0.95, 0)]]],
    "X": [[[(0.1, 0), (0.9, 1)], [(0.9, 0), (0.1, 1)]],
          [[(0.15, 0), (0.85, 1)], [(0.8, 0), (0.2, 1)]]],
    "Y": [[[(0.1, 0), (0.5, 0.5), (0.9, 0)], [(0.5, 0.5), (0.5, 1)]],
          [[(0.1, 0), (0.5, 0.5)], [(0.9, 0), (0.3, 1)]]],
    "Z": [[[(0.1, 0), (0.9, 0), (0.1, 1), (0.9, 1)]],
          [[(0.1, 0), (0.9, 0), (0.1, 1), (0.9, 1)], [(0.3, 0.5), (0.7, 0.5)]]],
    "a": [[_loop(0.45, 0.55, 0.38, 0.42, 330), [(0.85, 0.1), (0.85, 1)]],
          [_arc(0.45, 0.55, 0.38, 0.42, 330, 10) + [(0.85, 0.1), (0.85, 0.9), (0.95, 1)]],
          [_arc(0.5, 0.25, 0.35, 0.25, 200, 360) + [(0.85, 1)],
           _arc(0.5, 0.72, 0.35, 0.28, 330, 0)]],
    "b": [[[(0.15, 0), (0.15, 1)], _loop(0.5, 0.7, 0.35, 0.3, 180)],
          [[(0.2, 0), (0.15, 1)] + _arc(0.5, 0.7, 0.35, 0.3, 140, -200)]],
    "d": [[[(0.85, 0), (0.85, 1)], _loop(0.5, 0.7, 0.35, 0.3, 0)],
          [_arc(0.5, 0.7, 0.35, 0.3, 330, -20) + [(0.85, 0), (0.85, 1)]]],
    "e": [[[(0.1, 0.5), (0.9, 0.5)] + _arc(0.5, 0.5, 0.4, 0.5, 0, -310)],
          [[(0.15, 0.6), (0.85, 0.4)] + _arc(0.5, 0.5, 0.4, 0.5, -20, -320)]],
    "f": [[[(0.85, 0.1), (0.6, 0), (0.4, 0.1), (0.4, 1)], [(0.1, 0.4), (0.8, 0.4)]],
          [_arc(0.6, 0.15, 0.25, 0.15, 0, -180) + [(0.35, 1)], [(0.1, 0.45), (0.75, 0.45)]]],
    "g": [[_loop(0.5, 0.25, 0.35, 0.25, 0) + [(0.85, 0.8)] + _arc(0.5, 0.8, 0.35, 0.2, 0, 180)],
          [_loop(0.5, 0.25, 0.35, 0.25, 0) + [(0.8, 1), (0.2, 0.9)]]],
    "h": [[[(0.15, 0), (0.15, 1)],
           [(0.15, 0.6)] + _arc(0.5, 0.6, 0.35, 0.25, 200, 360) + [(0.85, 1)]],
          [[(0.2, 0), (0.15, 1)] + _arc(0.5, 0.6, 0.35, 0.25, 180, 360) + [(0.85, 1)]]],
    "n": [[[(0.15, 0.05), (0.15, 1)],
           [(0.15, 0.35)] + _arc(0.5, 0.35, 0.35, 0.3, 200, 360) + [(0.85, 1)]],
          [[(0.15, 0), (0.15, 1)] + _arc(0.5, 0.35, 0.35, 0.35, 180, 360) + [(0.85, 1)]]],
    "q": [[_loop(0.45, 0.3, 0.38, 0.3, 0), [(0.85, 0), (0.85, 1)]],
          [_loop(0.45, 0.3, 0.38, 0.3, 0) + [(0.85, 1), (1, 0.85)]]],
    "r": [[[(0.2, 0), (0.2, 1)], [(0.2, 0.3), (0.5, 0.02), (0.9, 0.05)]],
          [[(0.2, 0), (0.2, 1)] + _arc(0.55, 0.3, 0.35, 0.3, 180, 300)]],
    "t": [[[(0.45, 0), (0.45, 0.85), (0.6, 1), (0.85, 0.9)], [(0.1, 0.3), (0.85, 0.3)]],
          [[(0.5, 0), (0.5, 1)], [(0.1, 0.3), (0.9, 0.3)]]],
}
HAND_VARIANTS = 16
HAND_SHARE = 0.95  # of each character's images drawn from its hand-drawn forms (fonts: too
                   # regular for handwriting)


def _smooth_jitter(rng, n_points, sigma=0.025):
    """Random offsets (n_points, 2) for a stroke's points: independent for a polyline's few corners,
    smoothed along the stroke for an arc's many points (independent ones would make it zigzag)."""
    jitter = rng.normal(0, sigma, (n_points, 2))
    for _ in range(n_points // 4):  # a [1, 2, 1] / 4 moving average, more passes for longer strokes
        padded = np.concatenate([jitter[:1], jitter, jitter[-1:]])
        jitter = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    # averaging shrinks the offsets: roughly undo that, so arcs vary too
    return jitter * np.sqrt(1 + n_points // 4)


def _round_corners(points, passes=2):
    """Chaikin's corner cutting: each corner of the polyline replaced by a curve;
    the ends stay where they are."""
    for _ in range(passes):
        if len(points) < 3:
            return points
        a, b = points[:-1], points[1:]
        cut = np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], 1).reshape(-1, 2)
        points = np.concatenate([points[:1], cut[1:-1], points[-1:]])
    return points


_SEGMENT_STEPS = np.linspace(0, 1, 64)[:, None]  # a segment's dots: 0 = its start, 1 = its end


def _hand_lines(char):
    """Centre lines (boolean, forms x variants, canvas, canvas) of the hand-drawn forms of `char`;
    jitter seeded."""
    rng = np.random.default_rng(ord(char))
    lines = []
    for form in HAND_FORMS.get(char, []):
        for _ in range(HAND_VARIANTS):
            canvas = np.zeros((GLYPH_CANVAS, GLYPH_CANVAS), dtype=bool)
            # each stroke moved a little against the others
            shift = rng.normal(0, 0.05, (len(form), 2))
            strokes = [np.asarray(stroke, dtype=np.float64) + offset
                       + _smooth_jitter(rng, len(stroke))
                       for stroke, offset in zip(form, shift)]
            if rng.random() < 0.5:  # a quick hand rounds the corners
                strokes = [_round_corners(points) for points in strokes]
            # centred, the longer side GLYPH_SIDE as the fonts: no line reaches the canvas edge,
            # where the distance map's border padding would smear it outwards
            low, high = (np.min([s.min(0) for s in strokes], 0),
                         np.max([s.max(0) for s in strokes], 0))
            for points in strokes:
                points = ((points - (low + high) / 2) / (high - low).max() * GLYPH_SIDE
                          + GLYPH_CANVAS / 2)
                # 64 dots along each segment, all segments at once (a loop per segment cost seconds)
                a, b = points[:-1, None], points[1:, None]
                dots = np.round(a + (b - a) * _SEGMENT_STEPS).astype(int).reshape(-1, 2)
                x, y = np.clip(dots, 0, GLYPH_CANVAS - 1).T
                canvas[y, x] = True
            lines.append(canvas)
    return np.stack(lines) if lines else np.zeros((0, GLYPH_CANVAS, GLYPH_CANVAS), dtype=bool)


# The distance maps depend on this file, matplotlib's fonts and the libraries' versions, never on
# a seed, so they are kept on disk: only a first run draws them (seconds for all 47 classes). The
# cache stores the squared distances, whole numbers that give the maps back bit for bit: it cannot
# change an image.
@functools.cache
def _glyph_cache_key():
    """A hash of everything the maps depend on; None where that cannot be read (no caching)."""
    try:
        digest = hashlib.sha256()
        # all of this file, not a list of the functions that draw: a helper added later cannot be
        # left out of the key, and an unrelated edit only costs one redraw
        with open(__file__, "rb") as f:
            digest.update(f.read())
        for package in ("numpy", "scipy", "torch", "matplotlib"):  # matplotlib's wheel has FreeType
            digest.update(importlib.metadata.version(package).encode())
        for name in LETTER_FONTS:
            with open(_font_path(name), "rb") as f:
                digest.update(f.read())
    except (OSError, ImportError, AttributeError, TypeError):  # no source, metadata or matplotlib
        return None
    return digest.hexdigest()[:16]


def _glyph_cache_folder():
    """$XDG_CACHE_HOME (or ~/.cache)/gan-scripts/glyphs/<key>, or None."""
    key = _glyph_cache_key()
    if key is None:
        return None
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "gan-scripts", "glyphs", key)


def _glyph_cache_file(folder, char):
    return os.path.join(folder, f"{ord(char)}.npz")  # "a" and "A" would be one file name on macOS


def _maps_from_squared(squared):
    # the float64 square root then float32, as distance_transform_edt's maps were made
    return torch.from_numpy(np.sqrt(squared.astype(np.float64))).float()


def _load_glyph_maps(char):
    """The char's (maps, how many hand-drawn) from the disk cache; None if absent or unreadable."""
    folder = _glyph_cache_folder()
    if folder is None:
        return None
    try:
        with np.load(_glyph_cache_file(folder, char), allow_pickle=False) as stored:
            squared = stored["squared"]
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: draw the glyphs instead
        return None
    hand = len(HAND_FORMS.get(char, ())) * HAND_VARIANTS  # as many as _hand_lines draws
    if squared.dtype != np.uint16 or squared.shape[1:] != (GLYPH_CANVAS, GLYPH_CANVAS):
        return None
    if len(squared) <= hand:  # at least one font has every character
        return None
    return _maps_from_squared(squared), hand


def _save_glyph_maps(char, maps):
    """Keep the char's maps in the disk cache; silently nothing where the folder is not writable."""
    folder = _glyph_cache_folder()
    if folder is None:
        return
    squared = np.rint(maps.double().numpy() ** 2)
    if squared.max() > np.iinfo(np.uint16).max:
        return
    squared = squared.astype(np.uint16)
    if not torch.equal(_maps_from_squared(squared), maps):  # not restored bit for bit: keep no copy
        return
    try:
        first = not os.path.isdir(folder)
        os.makedirs(folder, exist_ok=True)
        if first:  # a new key: the old keys' maps will never be read again
            parent, key = os.path.split(folder)
            for old in os.listdir(parent):
                if old != key:
                    shutil.rmtree(os.path.join(parent, old), ignore_errors=True)
        handle, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:  # written whole, then renamed: a reader never sees half a file
            with os.fdopen(handle, "wb") as f:
                np.savez_compressed(f, squared=squared)
            os.replace(tmp, _glyph_cache_file(folder, char))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:  # read-only, full or not a folder: the next run draws again
        pass


def _glyph_distances(chars):
    """For each char: (distance maps (glyphs, canvas, canvas) to its centre line in every font that
    has it, then in its hand-drawn forms; how many are hand-drawn). Kept in memory and on disk."""
    new = [c for c in dict.fromkeys(chars) if c not in _GLYPHS]
    for c in new:
        stored = _load_glyph_maps(c)
        if stored is not None:
            _GLYPHS[c] = stored
    new = [c for c in new if c not in _GLYPHS]
    if new:
        from scipy.ndimage import distance_transform_edt
        glyphs = {c: [g for g in (_render_glyph(_font(name), c) for name in LETTER_FONTS)
                      if g is not None]
                  for c in new}
        for c, found in glyphs.items():
            if not found:
                raise ValueError(f"letters: none of matplotlib's fonts has the character {c!r}")
        lines = _centre_lines(torch.stack([g for c in new for g in glyphs[c]]).numpy() > 0.5)
        maps = torch.from_numpy(np.stack([distance_transform_edt(~line) for line in lines])).float()
        for c, part in zip(new, maps.split([len(glyphs[c]) for c in new])):
            hand = [distance_transform_edt(~line) for line in _hand_lines(c)]
            char_maps = (torch.cat([part, torch.from_numpy(np.stack(hand)).float()])
                         if hand else part)
            _GLYPHS[c] = (char_maps, len(hand))
            _save_glyph_maps(c, _GLYPHS[c][0])
    return [_GLYPHS[c] for c in chars]


def _gaussian_blur(images, sigma):
    """Blur each image (N, 1, H, W) with its own Gaussian sigma (N,), in px:
    one grouped conv per axis."""
    radius = max(1, math.ceil(3 * float(sigma.max())))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True))[:, None]  # (N, 1, taps)
    n = len(images)
    out = F.conv2d(F.pad(images.transpose(0, 1), (radius, radius, 0, 0)), kernel[:, :, None, :],
                   groups=n)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius)), kernel[:, :, :, None], groups=n)
    return out.transpose(0, 1)


def _emnist_frame(ink, threshold=0.3):
    """EMNIST's framing (Cohen et al. 2017): the ink's bounding box centred, its longer side scaled
    to the image less a 2-px border at 28 px (24/28 of the side), aspect ratio kept."""
    n, _, h, w = ink.shape
    rows, cols = ink.amax(3)[:, 0] > threshold, ink.amax(2)[:, 0] > threshold
    index = torch.arange(h)
    top, bottom = torch.where(rows, index, h).amin(1), torch.where(rows, index, -1).amax(1)
    left, right = torch.where(cols, index, w).amin(1), torch.where(cols, index, -1).amax(1)
    empty = bottom < top
    # grid_sample coordinates, align_corners=False
    centre_y = torch.where(empty, 0.0, (top + bottom + 1) / h - 1)
    centre_x = torch.where(empty, 0.0, (left + right + 1) / w - 1)
    half = torch.where(empty, 1.0, torch.maximum(bottom - top + 1, right - left + 1) / h)
    zoom = half * 28 / 24
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = zoom, zoom, centre_x, centre_y
    grid = F.affine_grid(theta, ink.shape, align_corners=False)
    return F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def letters(chars, n_per_char, image_size=32, seed=0):
    """Handwriting-like characters, EMNIST style:
    white strokes on black, upright, centred and large.

    Each image redraws one centre line (a hand-drawn form of the character for HAND_SHARE of the
    images, else a font matplotlib ships) with a random pen width, aspect, rotation, slant and a
    smooth elastic warp, then blurs and frames it as EMNIST does (bounding box centred, longer side
    24/28 of the image). Returns (images, labels): uint8 (N, 1, image_size, image_size) and int64
    indices into `chars`, n_per_char of each, char by char.
    Deterministic for a seed. Raises ValueError for a character outside A-Z, a-z, 0-9.
    """
    unknown = [c for c in chars if len(c) != 1 or c not in LETTER_CHARS]
    if unknown:
        raise ValueError(f"letters: cannot draw {' '.join(map(repr, unknown))}: "
                         "the characters must be A-Z, a-z or 0-9")
    if len(chars) == 0 or len(set(chars)) != len(chars):
        raise ValueError(f"letters: need distinct characters, got {chars!r}")
    if n_per_char < 1 or image_size < 8:
        raise ValueError("letters: need n_per_char >= 1 and image_size >= 8, "
                         f"got {n_per_char} and {image_size}")
    distances, hand_per_char = zip(*_glyph_distances(chars))
    glyphs_per_char = torch.tensor([len(d) for d in distances])
    hand_per_char = torch.tensor(hand_per_char)
    fonts_per_char = glyphs_per_char - hand_per_char
    # each char's fonts, then its hand-drawn forms
    first_glyph = torch.cumsum(glyphs_per_char, 0) - glyphs_per_char
    distances = torch.cat(distances)[:, None]  # (glyphs of all chars, 1, canvas, canvas)
    labels = torch.arange(len(chars)).repeat_interleave(n_per_char)
    n = len(labels)

    # Every random number is drawn up front from one generator: the result depends on the seed only.
    generator = torch.Generator().manual_seed(seed)

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    # A random glyph per image: a hand-drawn form for HAND_SHARE of every character, a font for
    # the rest.
    hand = (uniform(0, 1, n) < HAND_SHARE) & (hand_per_char[labels] > 0)
    pick = uniform(0, 1, n)
    hand_glyph = fonts_per_char[labels] + (pick * hand_per_char[labels]).long()
    font_glyph = (pick * fonts_per_char[labels]).long()
    glyph = first_glyph[labels] + torch.where(hand, hand_glyph, font_glyph)
    pen = uniform(1.8, 4.8, n, 1, 1, 1)      # pen radius, canvas px (the low end: real EMNIST B's
                                             # thin strokes)
    blur = uniform(0.3, 0.7, n)              # Gaussian blur sigma, image px: EMNIST blurs before
                                             # shrinking
    scale = uniform(0.72, 0.8, n)            # small enough that no glyph leaves the canvas; the
                                             # framing fills it
    aspect = torch.exp(uniform(-0.2, 0.2, n))
    rotation = uniform(-math.radians(15), math.radians(15), n)
    slant = uniform(-0.2, 0.7, n)            # handwriting leans right more often than left
                                             # (EMNIST's A's: a lot)
    warp = uniform(0.04, 0.13, n, 1, 1, 1)   # elastic displacement, fraction of the half-width
    # coarse random displacements, smooth once upsampled
    field = torch.randn(n, 2, 4, 4, generator=generator)
    # finer ones: a hand's unsteady line
    wobble = 0.015 * torch.randn(n, 2, 8, 8, generator=generator)

    # Forward map glyph -> image: rotate(slant(stretch(p))); grid_sample needs the inverse.
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    rotate = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    lean = torch.eye(2).repeat(n, 1, 1)
    lean[:, 0, 1] = -slant  # x moves right as y goes up (y points down in image coordinates)
    stretch = torch.diag_embed(torch.stack([scale * aspect.sqrt(), scale / aspect.sqrt()], -1))
    inverse = torch.linalg.inv(rotate @ lean @ stretch)
    theta = torch.cat([inverse, torch.zeros(n, 2, 1)], 2)

    # Where each image point comes from, on a coarse 17x17 grid: the map is smooth, and bilinear
    # interpolation to full size keeps its affine part exact.
    coarse = F.affine_grid(theta, (n, 1, 17, 17), align_corners=True).permute(0, 3, 1, 2)
    coarse = coarse + warp * F.interpolate(field, size=(17, 17), mode="bicubic", align_corners=True)
    coarse = coarse + F.interpolate(wobble, size=(17, 17), mode="bicubic", align_corners=True)

    work = 2 * image_size  # draw at twice the size, then average 2x2 pixels: anti-aliased strokes
    ink_scale = work / GLYPH_CANVAS  # distance in canvas px -> drawing px
    images = torch.empty(n, 1, image_size, image_size, dtype=torch.uint8)
    chunk = max(1, (1 << 21) // (work * work))  # bounded memory for any image size
    for start in range(0, n, chunk):
        part = slice(start, min(n, start + chunk))
        grid = F.interpolate(coarse[part], size=(work, work), mode="bilinear", align_corners=True)
        # Warp the distance to the centre line (border padding: far from the line outside the
        # canvas), then ink every point within the pen radius of the line, with a one-pixel
        # soft edge.
        distance = F.grid_sample(distances[glyph[part]], grid.permute(0, 2, 3, 1), mode="bilinear",
                                 padding_mode="border", align_corners=True)
        ink = distance.mul_(-ink_scale).add_(pen[part] * ink_scale + 0.5).clamp_(0, 1)
        ink = F.avg_pool2d(_emnist_frame(_gaussian_blur(ink, 2 * blur[part])), 2)
        # EMNIST stretches its final pixels to 0-255
        ink = ink / ink.amax((1, 2, 3), keepdim=True).clamp(min=1e-6)
        images[part] = ink.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return images, labels


def write_letters(out, n=200, image_size=28, seed=0, chars=None):
    """EMNIST-style letters in the AIML431 course layout:
    OUT/Train/<EMNIST-Balanced label>/char_<k>.jpeg.

    n images per character (default: all 47 EMNIST-Balanced classes). Like the course's files, each
    is grayscale PNG data under a .jpeg name, stored transposed (as EMNIST's raw arrays are).
    """
    from PIL import Image

    chars = EMNIST_BALANCED if chars is None else chars
    unknown = [c for c in chars if len(c) != 1 or c not in EMNIST_BALANCED]
    if unknown:
        raise ValueError("write_letters: EMNIST-Balanced has no class for "
                         f"{' '.join(map(repr, unknown))} "
                         f"(it merges c i j k l m o p s u v w x y z with their capitals)")
    # validates the rest before any file exists
    images, labels = letters(chars, n, image_size=image_size, seed=seed)
    for c in chars:
        os.makedirs(os.path.join(out, "Train", str(EMNIST_BALANCED.index(c))), exist_ok=True)
    for k, (image, label) in enumerate(zip(images[:, 0].numpy(), labels.tolist())):
        folder = os.path.join(out, "Train", str(EMNIST_BALANCED.index(chars[label])))
        Image.fromarray(np.ascontiguousarray(image.T)).save(os.path.join(folder, f"char_{k}.jpeg"),
                                                             format="PNG")


# ===========================================================================
# Object scenes (iCLEVR-like)
# ===========================================================================

# The 24 i-CLEVR labels: index = 8 * shape + colour, shapes and colours in this order
# (objects.json).
SCENE_COLOURS = {  # CLEVR's RGB values, under the names i-CLEVR uses
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SCENE_SHAPES = ("cube", "sphere", "cylinder")
SCENE_OBJECTS = [f"{colour} {shape}" for shape in SCENE_SHAPES for colour in SCENE_COLOURS]
MAX_SCENE_OBJECTS = 3

# Scenes live in a 4 x 3 "frame" (the 320x240 i-CLEVR picture); pixels map onto it, so a square
# image is the 4:3 scene squashed, exactly what resizing a real i-CLEVR image to 64x64 gives.
FRAME_W, FRAME_H = 4.0, 3.0
TOP_SQUASH = 0.45  # the camera looks down at the floor: a circle on the floor is drawn this flat
LIGHT = tuple(float(v) for v in np.array([-0.45, 0.75, 0.5])
              / np.linalg.norm([-0.45, 0.75, 0.5]))  # (right, up, to camera)
HALFWAY = tuple(float(v) for v in (np.array(LIGHT) + [0, 0, 1])
                / np.linalg.norm(np.array(LIGHT) + [0, 0, 1]))


class SceneObject:
    """One object: label (0-23), ground point (x, y) in frame units, radius, yaw angle (cubes),
    metal or rubber."""
    __slots__ = ("label", "x", "y", "radius", "angle", "metal")

    def __init__(self, label, x, y, radius, angle, metal):
        self.label, self.x, self.y = label, x, y
        self.radius, self.angle, self.metal = radius, angle, metal

    @property
    def shape(self):
        return SCENE_SHAPES[self.label // 8]

    @property
    def height(self):
        """Drawn height of the body above its ground point (seen from slightly above)."""
        return {"cube": 1.3, "sphere": 2.0, "cylinder": 1.7}[self.shape] * self.radius

    def box(self):
        """(left, top, right, bottom) of the drawn object in frame units."""
        r = self.radius
        return (self.x - r, self.y - self.height - TOP_SQUASH * r,
                self.x + r, self.y + TOP_SQUASH * r)

    def centre(self):
        """A point in the middle of the object's visible body (frame units): its colour is the
        label's colour."""
        if self.shape == "sphere":
            return self.x, self.y - self.radius
        return self.x, self.y - 0.5 * self.height + 0.5 * TOP_SQUASH * self.radius


def _overlap_ok(new, others):
    """Limited overlap: each object's centre stays clear of the others, and boxes share < 20% of
    the smaller."""
    for other in others:
        a, b = new.box(), other.box()
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        if w > 0 and h > 0:
            smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if w * h > 0.2 * smaller:
                return False
        for one, two in ((new, other), (other, new)):
            cx, cy = one.centre()
            left, top, right, bottom = two.box()
            if left - 0.05 < cx < right + 0.05 and top - 0.05 < cy < bottom + 0.05:
                return False
    return True


def _random_object(rng, label, others):
    """Place one object at random (rejection sampling); None if the floor is too crowded."""
    for _ in range(200):
        y = rng.uniform(1.25, 2.75)
        # perspective: farther (higher) objects are smaller
        depth_scale = 0.7 + 0.3 * (y - 1.25) / 1.5
        radius = rng.uniform(0.36, 0.46) * depth_scale
        x = rng.uniform(0.2 + radius, FRAME_W - 0.2 - radius)
        new = SceneObject(int(label), float(x), float(y), float(radius),
                          float(rng.uniform(0, np.pi / 2)), bool(rng.random() < 0.5))
        if _overlap_ok(new, others):
            return new
    return None


def scene_layouts(n, seed=0, min_objects=1, max_objects=MAX_SCENE_OBJECTS, cumulative_labels=None):
    """n random scenes: lists of SceneObject with distinct labels, 1-3 objects each,
    deterministic per seed."""
    rng = np.random.default_rng(seed)
    layouts = []
    while len(layouts) < n:
        count = int(rng.integers(min_objects, max_objects + 1))
        labels = rng.choice(len(SCENE_OBJECTS), size=count, replace=False)
        objects = []
        for label in labels:
            new = _random_object(rng, label, objects)
            if new is None:
                break
            objects.append(new)
        if len(objects) == count:
            layouts.append(objects)
    return layouts


def _soft(distance, pixel):
    """Coverage from a signed distance (negative inside):
    a one-pixel ramp anti-aliases the edges."""
    return np.clip(0.5 - distance / pixel, 0.0, 1.0)


def _ellipse_distance(x, y, cx, cy, rx, ry):
    return (np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0) * np.minimum(rx, ry)


def _polygon_distance(x, y, corners):
    """Signed distance (approximate at corners) to a convex polygon;
    corners: list of (px, py) arrays (B,1,1)."""
    mx = sum(c[0] for c in corners) / len(corners)
    my = sum(c[1] for c in corners) / len(corners)
    distance = None
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
        nx, ny = by - ay, ax - bx  # a normal of the edge
        length = np.sqrt(nx ** 2 + ny ** 2) + 1e-9
        sign = np.where(nx * (ax - mx) + ny * (ay - my) >= 0, 1.0, -1.0)  # make it point outwards
        d = sign * (nx * (x - ax) + ny * (y - ay)) / length
        distance = d if distance is None else np.maximum(distance, d)
    return distance


def _lambert(nx, ny, nz):
    return 0.38 + 0.72 * np.clip(nx * LIGHT[0] + ny * LIGHT[1] + nz * LIGHT[2], 0.0, None)


def _specular(nx, ny, nz, metal):
    half = HALFWAY  # Blinn-Phong: between the light and the viewer
    cosine = np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0.0, 1.0)
    return np.where(metal, 0.55 * cosine ** 30, 0.12 * cosine ** 8)


def _draw_sphere(x, y, p, pixel):
    r = p["radius"]
    cx, cy = p["x"], p["y"] - r
    dx, dy = (x - cx) / r, (y - cy) / r
    inside = np.clip(1.0 - dx ** 2 - dy ** 2, 0.0, None)
    nz = np.sqrt(inside)
    alpha = _soft(np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r, pixel)
    return alpha, _lambert(dx, -dy, nz), _specular(dx, -dy, nz, p["metal"])


def _draw_cylinder(x, y, p, pixel):
    r, h = p["radius"], 1.7 * p["radius"]
    cx, cy = p["x"], p["y"]
    ry = TOP_SQUASH * r
    body = np.maximum(np.abs(x - cx) - r, np.maximum(cy - h - y, y - cy))
    bottom = _ellipse_distance(x, y, cx, cy, r, ry)
    top = _ellipse_distance(x, y, cx, cy - h, r, ry)
    alpha = _soft(np.minimum(np.minimum(body, bottom), top), pixel)
    top_alpha = _soft(top, pixel)
    nx = np.clip((x - cx) / r, -1.0, 1.0)
    nz = np.sqrt(1.0 - nx ** 2)
    zero = np.zeros_like(nx)
    side_shade, top_shade = _lambert(nx, zero, nz), _lambert(zero, 1.0 + zero, zero)
    shade = np.where(alpha > 0, (top_alpha * top_shade + (alpha - top_alpha).clip(0) * side_shade)
                     / np.maximum(alpha, 1e-6), side_shade)
    shine = _specular(nx, zero, nz, p["metal"]) * (1.0 - top_alpha)
    return alpha, shade, shine


def _draw_cube(x, y, p, pixel):
    # corners at distance r from the axis: as wide as a sphere when turned 45 degrees
    half = p["radius"]
    h = 1.3 * p["radius"]
    cx, cy, theta = p["x"], p["y"], p["angle"]
    corner_angles = [theta + np.pi / 4 + i * np.pi / 2 for i in range(4)]
    top = [(cx + half * np.cos(a), cy - h + TOP_SQUASH * half * np.sin(a)) for a in corner_angles]
    bottom = [(tx, ty + h) for tx, ty in top]
    box = np.maximum(np.abs(x - cx) - half,
                     np.maximum(cy - h - TOP_SQUASH * half - y, y - cy - TOP_SQUASH * half))
    top_alpha = _soft(_polygon_distance(x, y, top), pixel)
    alpha, shade = top_alpha, top_alpha * _lambert(0.0, 1.0, 0.0)
    zero = np.zeros_like(theta)
    for i in range(4):
        facing = theta + np.pi / 2 + i * np.pi / 2  # outward normal of side face i, on the floor
        visible = np.sin(facing) > 0  # faces turned towards the camera
        face = [top[i], top[(i + 1) % 4], bottom[(i + 1) % 4], bottom[i]]
        # a face seen almost edge-on has nearly parallel edges: bound it by the cube's box as well
        face_distance = np.maximum(_polygon_distance(x, y, face), box)
        face_alpha = _soft(face_distance, pixel) * visible
        alpha = alpha + face_alpha
        shade = shade + face_alpha * _lambert(np.cos(facing), zero, np.sin(facing))
    alpha = np.clip(alpha, 0.0, 1.0)
    shade = shade / np.maximum(alpha, 1e-6)
    shine = np.where(p["metal"], 0.15 * (shade > 0.9), 0.0) * alpha
    return alpha, shade, shine


_DRAW = {"cube": _draw_cube, "sphere": _draw_sphere, "cylinder": _draw_cylinder}


def _windows(left, top, right, bottom, width, height):
    """Pixel windows of one common size covering each box (frame units, arrays):
    row and column indices."""
    cols0 = np.floor(left * (width / FRAME_W)).astype(np.int64) - 1
    rows0 = np.floor(top * (height / FRAME_H)).astype(np.int64) - 1
    w = min(width, int(np.ceil((right - left).max() * (width / FRAME_W))) + 3)
    h = min(height, int(np.ceil((bottom - top).max() * (height / FRAME_H))) + 3)
    cols = np.clip(cols0, 0, width - w)[:, None] + np.arange(w)
    rows = np.clip(rows0, 0, height - h)[:, None] + np.arange(h)
    return rows, cols


def render_scenes(layouts, width, height, brightness=None):
    """Draw scenes (lists of SceneObject) as uint8 (N, 3, height, width),
    vectorised over the images.

    brightness: one floor brightness factor per scene (default 1). Objects are drawn far to near
    (painter's order), each group of same-shape objects at once, inside a small window around
    each object.
    """
    pixel = max(FRAME_W / width, FRAME_H / height)
    pixel_w, pixel_h = FRAME_W / width, FRAME_H / height
    x_of = lambda cols: ((cols + 0.5) * pixel_w).astype(np.float32)[:, None, :]  # noqa: E731
    y_of = lambda rows: ((rows + 0.5) * pixel_h).astype(np.float32)[:, :, None]  # noqa: E731
    x, y = x_of(np.arange(width)[None]), y_of(np.arange(height)[None])
    brightness = (np.ones(len(layouts)) if brightness is None
                  else np.asarray(brightness, dtype=np.float64))
    # floor: lighter towards the camera and the middle, as CLEVR's area lights make it
    floor = 0.40 + 0.18 * (y / FRAME_H) - 0.2 * ((x - FRAME_W / 2) / FRAME_W) ** 2
    images = np.empty((len(layouts), height, width, 3), dtype=np.uint8)
    for start in range(0, len(layouts), 256):
        chunk = layouts[start:start + 256]
        b = len(chunk)
        canvas = np.repeat((floor * brightness[start:start + b, None, None])[..., None], 3,
                           axis=-1).astype(np.float32)
        # painter's order: far to near
        ordered = [sorted(scene, key=lambda o: o.y) for scene in chunk]
        # shadows first: the light is up-left-front, so each shadow falls right and back on the
        # floor
        for slot in range(MAX_SCENE_OBJECTS):
            idx = np.array([i for i, scene in enumerate(ordered) if len(scene) > slot],
                           dtype=np.int64)
            if len(idx) == 0:
                continue
            ox, oy, r = (np.array([getattr(ordered[i][slot], k) for i in idx], dtype=np.float32)
                         for k in ("x", "y", "radius"))
            rows, cols = _windows(ox - 0.8 * r, oy - 1.0 * r, ox + 2.0 * r, oy + 0.5 * r,
                                  width, height)
            ox, oy, r = ox[:, None, None], oy[:, None, None], r[:, None, None]
            shadow = _soft(_ellipse_distance(x_of(cols), y_of(rows), ox + 0.55 * r, oy - 0.2 * r,
                                             1.25 * r, 0.55 * r),
                           0.35 * r)
            where = (idx[:, None, None], rows[:, :, None], cols[:, None, :])
            canvas[where] *= (1.0 - 0.35 * shadow)[..., None]
        for slot in range(MAX_SCENE_OBJECTS):
            for shape_index, shape in enumerate(SCENE_SHAPES):
                idx = np.array([i for i, scene in enumerate(ordered)
                                if len(scene) > slot and scene[slot].label // 8 == shape_index],
                               dtype=np.int64)
                if len(idx) == 0:
                    continue
                objects = [ordered[i][slot] for i in idx]
                boxes = np.array([o.box() for o in objects], dtype=np.float32)
                rows, cols = _windows(*boxes.T, width, height)
                p = {k: np.array([getattr(o, k) for o in objects], dtype=np.float32)[:, None, None]
                     for k in ("x", "y", "radius", "angle")}
                p["metal"] = np.array([o.metal for o in objects])[:, None, None]
                alpha, shade, shine = _DRAW[shape](x_of(cols), y_of(rows), p, pixel)
                colour = np.array([SCENE_COLOURS[SCENE_OBJECTS[o.label].split()[0]]
                                   for o in objects],
                                  dtype=np.float32)[:, None, None, :] / 255.0
                painted = np.clip(colour * shade[..., None] + shine[..., None], 0.0, 1.0)
                a = alpha[..., None].astype(np.float32)
                where = (idx[:, None, None], rows[:, :, None], cols[:, None, :])
                canvas[where] = canvas[where] * (1.0 - a) + painted * a
        images[start:start + b] = np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def multi_hot(label_lists):
    """Lists of label indices -> float (N, 24) multi-hot."""
    labels = torch.zeros(len(label_lists), len(SCENE_OBJECTS))
    for i, label_list in enumerate(label_lists):
        labels[i, list(label_list)] = 1.0
    return labels


CIFAR_CHARS = "ABCDEFGHIJ"
CIFAR_COLOURS = torch.tensor([  # one clearly different colour per class
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [170, 110, 40], [250, 250, 250]],
    dtype=torch.float32)


def coloured_letters(n_per_class, image_size=32, seed=0):
    """The CIFAR scripts' offline stand-in with 10 classes: letter A-J, drawn in its class's colour
    on a dark background of random tint. Quick to make; class and colour are learnable. Returns
    uint8 images (N, 3, S, S), labels (N,) and the class names."""
    glyphs, labels = letters(list(CIFAR_CHARS), n_per_class, image_size=image_size, seed=seed)
    ink = glyphs.float() / 255  # (N, 1, S, S): 1 on the stroke, 0 on the background
    background = torch.rand(len(glyphs), 3, 1, 1,
                            generator=torch.Generator().manual_seed(seed)) * 110
    foreground = CIFAR_COLOURS[labels].view(-1, 3, 1, 1)
    images = (background + (foreground - background) * ink).round().clamp(0, 255).to(torch.uint8)
    return images, labels.long(), list(CIFAR_CHARS)


def scenes(n, image_size=64, seed=0):
    """n iCLEVR-like scenes: (uint8 images (n, 3, S, S), float multi-hot labels (n, 24)),
    deterministic per seed."""
    layouts = scene_layouts(n, seed)
    brightness = np.random.default_rng([seed, 1]).uniform(0.94, 1.06, size=n)
    images = render_scenes(layouts, image_size, image_size, brightness)
    return images, multi_hot([[o.label for o in scene] for scene in layouts])


def condition_lists(make_up, seed):
    """Condition lists like test.json: make_up = {objects per list: how many lists};
    lists of object names."""
    rng = np.random.default_rng(seed)
    lists = []
    for count, how_many in sorted(make_up.items()):
        for _ in range(how_many):
            lists.append([SCENE_OBJECTS[i]
                          for i in rng.choice(len(SCENE_OBJECTS), size=count, replace=False)])
    return lists


# the real lists' make-up: test.json 6/12/14 lists of 1/2/3 objects (72 labels),
# new_test.json 12/20 of 2/3 (84)
TEST_MAKE_UP = {1: 6, 2: 12, 3: 14}
NEW_TEST_MAKE_UP = {2: 12, 3: 20}


def write_iclevr(out, n=1000, image_size=None, seed=0):
    """i-CLEVR layout: iclevr/CLEVR_train_<scene>_<t>.png, objects.json, train.json, test.json,
    new_test.json.

    Each of the n scenes gives three pictures, t = 0, 1, 2, with 1, 2 and 3 objects added one at a
    time, as i-CLEVR does. Pictures are 320x240 like the real ones (image_size S: S*4/3 x S).
    """
    import json

    from PIL import Image

    if n < 1:
        raise ValueError("n must be at least 1 scene")
    height = 240 if image_size is None else int(image_size)
    width = height * 4 // 3
    image_dir = os.path.join(out, "iclevr")
    os.makedirs(image_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    layouts, names, brightness = [], [], []
    for scene_index in range(n):
        scene_brightness = rng.uniform(0.94, 1.06)
        # three objects placed one after another; retry the scene if the floor gets crowded
        while True:
            objects = []
            for label in rng.choice(len(SCENE_OBJECTS), size=MAX_SCENE_OBJECTS, replace=False):
                new = _random_object(rng, label, objects)
                if new is None:
                    break
                objects.append(new)
            if len(objects) == MAX_SCENE_OBJECTS:
                break
        for t in range(MAX_SCENE_OBJECTS):
            layouts.append(objects[:t + 1])
            brightness.append(scene_brightness)
            names.append(f"CLEVR_train_{scene_index:06d}_{t}.png")
    train = {}
    for start in range(0, len(layouts), 256):
        images = render_scenes(layouts[start:start + 256], width, height,
                               brightness[start:start + 256])
        for name, scene, image in zip(names[start:start + 256], layouts[start:start + 256], images):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(os.path.join(image_dir, name))
            train[name] = [SCENE_OBJECTS[o.label] for o in scene]
    files = {"objects.json": {name: i for i, name in enumerate(SCENE_OBJECTS)}, "train.json": train,
             "test.json": condition_lists(TEST_MAKE_UP, seed + 1),
             "new_test.json": condition_lists(NEW_TEST_MAKE_UP, seed + 2)}
    for name, content in files.items():
        with open(os.path.join(out, name), "w") as f:
            json.dump(content, f)
    return out


# ===========================================================================
# Anime-like faces
# ===========================================================================

# The MLDS course's colour vocabularies (hair: 12, eyes: 11), in the course's order.
HAIR_COLOURS = ("orange", "white", "aqua", "gray", "green", "red", "purple", "pink", "blue",
                "black", "brown", "blonde")
EYE_COLOURS = ("gray", "black", "orange", "pink", "yellow", "aqua", "purple", "green", "brown",
               "red", "blue")

# Base RGB of each colour: far enough apart that a small classifier can name them after
# shading, jitter and JPEG (white vs gray vs black, orange vs blonde, red vs pink, ...).
HAIR_RGB = {"orange": (245, 135, 35), "white": (238, 238, 242), "aqua": (55, 210, 210),
            "gray": (135, 135, 145), "green": (55, 165, 65), "red": (200, 25, 35),
            "purple": (125, 55, 180), "pink": (250, 145, 200), "blue": (35, 75, 215),
            "black": (32, 30, 36), "brown": (120, 68, 32), "blonde": (245, 218, 110)}
EYE_RGB = {"gray": (150, 150, 158), "black": (28, 26, 32), "orange": (245, 130, 20),
           "pink": (250, 130, 200), "yellow": (245, 225, 30), "aqua": (40, 215, 215),
           "purple": (150, 55, 225), "green": (30, 170, 50), "brown": (140, 75, 25),
           "red": (215, 25, 35), "blue": (30, 70, 225)}
SKIN_TONES = np.array([(255, 232, 214), (252, 221, 196), (245, 208, 178), (236, 192, 158)],
                      dtype=np.float32)
HAIR_STYLES = ("short", "bob", "long", "twintails")


def _colour_index(value, vocabulary, what, n):
    """Requested colours (None = random, a name, an index, or one per face) -> int array of
    length n."""
    if value is None:
        return None
    values = [value] * n if isinstance(value, (str, int, np.integer)) else list(value)
    if len(values) != n:
        raise ValueError(f"{what}: got {len(values)} colours for {n} faces")
    out = []
    for v in values:
        if isinstance(v, str):
            if v not in vocabulary:
                raise ValueError(f"unknown {what} colour {v!r}; "
                                 f"choose from {', '.join(vocabulary)}")
            v = vocabulary.index(v)
        if not 0 <= int(v) < len(vocabulary):
            raise ValueError(f"{what} colour index {v} out of range 0..{len(vocabulary) - 1}")
        out.append(int(v))
    return np.array(out, dtype=np.int64)


def _ellipse(x, y, cx, cy, rx, ry, pixel):
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return _soft((d - 1) * np.minimum(rx, ry), pixel)


def _render_faces(p, size):
    """Draw a batch of faces from their parameters `p`
    (arrays of shape (B, 1, 1) or (B, 1, 1, 3) for colours).

    Painter's algorithm on a [-1, 1] canvas: background, hair behind the head, neck, face, fringe,
    eyes, mouth. Returns float RGB in [0, 255] (B, S, S, 3) and the visible hair and iris weights
    (B, S, S).
    """
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    # A per-face zoom and shift: the whole drawing moves, as faces do in cropped photos.
    x = (grid[None, None, :] - p["shift_x"]) / p["zoom"]
    y = (grid[None, :, None] - p["shift_y"]) / p["zoom"]
    pixel = 2.0 / size / p["zoom"]
    b = len(p["zoom"])
    top_light = 1.08 - 0.25 * (y + 1) / 2  # lit from above
    canvas = np.broadcast_to(p["background"] * (1.05 - 0.12 * (y[..., None] + 1) / 2),
                             (b, size, size, 3)).copy()
    hair_seen = np.zeros((b, size, size), np.float32)
    iris_seen = np.zeros((b, size, size), np.float32)

    def paint(alpha, colour, hair=0.0, iris=0.0):
        nonlocal hair_seen, iris_seen
        canvas[:] = canvas * (1 - alpha[..., None]) + colour * alpha[..., None]
        hair_seen = hair_seen * (1 - alpha) + hair * alpha
        iris_seen = iris_seen * (1 - alpha) + iris * alpha

    cx, cy, rx, ry = p["head_x"], p["head_y"], p["head_rx"], p["head_ry"]
    hair = p["hair_rgb"]
    style = p["style"]

    # Hair behind the head, one shape per style.
    cap = _ellipse(x, y, cx, cy - 0.07, rx + 0.1, ry + 0.06, pixel)
    short_cut = _soft(y - (cy + 0.3), pixel)
    back = cap * short_cut * (style == 0)
    bob = _ellipse(x, y, cx, cy, rx + 0.17, ry + 0.1, pixel) * _soft(y - (cy + 0.85 * ry), pixel)
    back = np.maximum(back, bob * (style == 1))
    long_sides = _soft(np.abs(x - cx) - (rx + 0.16), pixel) * _soft(cy - y, pixel)
    long_hair = np.maximum(_ellipse(x, y, cx, cy - 0.05, rx + 0.16, ry + 0.08, pixel), long_sides)
    back = np.maximum(back, long_hair * (style == 2))
    tails = np.maximum(_ellipse(x, y, cx - rx - 0.2, cy + 0.35, 0.17, 0.45, pixel),
                       _ellipse(x, y, cx + rx + 0.2, cy + 0.35, 0.17, 0.45, pixel))
    back = np.maximum(back, np.maximum(cap * short_cut, tails) * (style == 3))
    paint(back, hair * 0.78 * top_light[..., None], hair=1.0)

    # Neck and face: an ellipse whose lower half narrows towards the chin by `chin`
    # (round to pointed).
    skin = p["skin"]
    neck = _soft(np.abs(x - cx) - 0.14 * rx / 0.6, pixel) * _soft(cy - y, pixel)
    paint(neck, skin * 0.86)
    below = np.clip((y - cy) / ry, 0, 1)
    width = rx * (1 - p["chin"] * below ** 2)
    d = np.sqrt(((x - cx) / width) ** 2 + ((y - cy) / ry) ** 2)
    paint(_soft((d - 1) * np.minimum(width, ry), pixel), skin)

    # Fringe: hair over the forehead down to a zigzag of strand tips, plus locks framing the face.
    t = (x - cx) * p["fringe_freq"] + p["fringe_phase"]
    zigzag = 1 - 2 * np.abs(t - np.floor(t) - 0.5)  # triangle wave: 1 at a strand tip
    fringe_line = cy - ry + p["fringe_depth"] + p["fringe_tips"] * zigzag
    fringe = cap * _soft(y - fringe_line, pixel)
    locks = (_ellipse(x, y, cx, cy - 0.05, rx + 0.1, ry + 0.02, pixel)
             * _soft(y - (cy + p["lock_length"]), pixel))
    locks = locks * _soft(p["lock_inset"] * rx - np.abs(x - cx), pixel)
    shine = 1 + 0.22 * np.exp(-((y - (cy - ry + 0.12)) / 0.05) ** 2)  # the anime highlight band
    paint(np.maximum(fringe, locks), np.minimum(hair * (top_light * shine)[..., None], 255),
          hair=1.0)

    # Eyes: white, iris in the eye colour (darker at the top), pupil, highlight, upper lash line.
    eye = p["eye_rgb"]
    for side in (-1, 1):
        ex, ey, erx, ery = cx + side * p["eye_spacing"], p["eye_y"], p["eye_rx"], p["eye_ry"]
        paint(_ellipse(x, y, ex, ey, erx, ery, pixel), np.float32(250))
        iris_shade = (0.82 + 0.26 * np.clip((y - (ey - ery)) / (2 * ery), 0, 1))[..., None]
        iris_alpha = _ellipse(x, y, ex, ey + 0.1 * ery, 0.82 * erx, 0.9 * ery, pixel)
        paint(iris_alpha, np.minimum(eye * iris_shade, 255), iris=1.0)
        paint(_ellipse(x, y, ex, ey + 0.15 * ery, 0.22 * erx, 0.28 * ery, pixel), eye * 0.45 + 8)
        paint(_ellipse(x, y, ex - side * 0.3 * erx, ey - 0.3 * ery, 0.22 * erx, 0.2 * ery, pixel),
              np.float32(255))
        ring = np.sqrt(((x - ex) / erx) ** 2 + ((y - ey) / ery) ** 2)
        lash = _soft((np.abs(ring - 1.07) - 0.12) * erx, pixel) * _soft(y - (ey - 0.3 * ery), pixel)
        paint(lash, np.array([45, 30, 35], np.float32))

    # Mouth: a small dark-red ellipse, open or closed.
    paint(_ellipse(x, y, cx, p["mouth_y"], p["mouth_rx"], p["mouth_ry"], pixel),
          np.array([175, 60, 70], np.float32))
    return canvas, hair_seen, iris_seen


def faces(n, image_size=64, seed=0, hair=None, eyes=None, return_masks=False):
    """Cartoon anime-like faces with known hair and eye colours.

    Returns (images uint8 (n, 3, S, S), hair int64 (n,), eyes int64 (n,)): indices into HAIR_COLOURS
    and EYE_COLOURS. `hair` / `eyes` request colours (a name, an index, or one per face); by default
    they are drawn uniformly. Head shape, hair style, fringe, eye spacing and size, mouth, skin
    tone, background, zoom and position vary per face. Deterministic for a seed, at any image size
    (the same faces, drawn at that resolution). With return_masks=True, also a dict of bool
    (n, S, S) masks "hair" and "iris" of the pixels showing those colours (for tests).
    """
    rng = np.random.default_rng(seed)
    hair_requested = _colour_index(hair, HAIR_COLOURS, "hair", n)
    eyes_requested = _colour_index(eyes, EYE_COLOURS, "eye", n)
    hair_index = rng.integers(0, len(HAIR_COLOURS), n)
    eye_index = rng.integers(0, len(EYE_COLOURS), n)
    hair_index = hair_index if hair_requested is None else hair_requested
    eye_index = eye_index if eyes_requested is None else eyes_requested

    def u(low, high):
        return rng.uniform(low, high, n).astype(np.float32)

    def shade(table, index):  # base colour, a little brighter or darker, a little tinted
        base = np.array([table[name] for name in index], np.float32)
        return np.clip(base * u(0.88, 1.08)[:, None] + rng.normal(0, 6, (n, 3)),
                       0, 255).astype(np.float32)

    background = rng.uniform(40, 255, (n, 3)).astype(np.float32)
    background = background * 0.6 + 255 * 0.4 * (rng.random(n) < 0.7)[:, None]  # mostly pastel
    head_rx = u(0.48, 0.6)
    head_ry = head_rx * u(1.05, 1.25)
    head_y = u(0.0, 0.12)
    eye_ry = u(0.17, 0.22)
    p = {"zoom": u(0.88, 1.04), "shift_x": u(-0.07, 0.07), "shift_y": u(-0.06, 0.06),
         "background": background.astype(np.float32),
         "hair_rgb": shade(HAIR_RGB, [HAIR_COLOURS[i] for i in hair_index]),
         "eye_rgb": shade(EYE_RGB, [EYE_COLOURS[i] for i in eye_index]),
         "skin": SKIN_TONES[rng.integers(0, len(SKIN_TONES), n)] * u(0.97, 1.02)[:, None],
         "style": rng.integers(0, len(HAIR_STYLES), n),
         "head_x": u(-0.03, 0.03), "head_y": head_y, "head_rx": head_rx, "head_ry": head_ry,
         "chin": u(0.1, 0.45),
         "fringe_freq": u(4.0, 7.0), "fringe_phase": u(0, 1),
         "fringe_depth": u(0.28, 0.42) * head_ry, "fringe_tips": u(0.08, 0.2),
         "lock_inset": u(0.0, 0.25) + 0.78, "lock_length": u(0.05, 0.4),
         "eye_spacing": head_rx * u(0.42, 0.55), "eye_y": head_y + u(0.02, 0.12),
         "eye_rx": eye_ry * u(0.75, 0.9), "eye_ry": eye_ry,
         "mouth_y": head_y + head_ry * u(0.55, 0.7), "mouth_rx": u(0.03, 0.07),
         "mouth_ry": u(0.012, 0.04)}
    # Keep the fringe tips above the eyes' tops: hair over the eyes would hide their colour.
    eye_top = p["eye_y"] - eye_ry - head_y + head_ry
    p["fringe_depth"] = np.minimum(p["fringe_depth"], eye_top - p["fringe_tips"] - 0.05)
    shapes = {}
    for k, v in p.items():
        v = np.asarray(v)
        shapes[k] = v.reshape(n, 1, 1, 3) if v.ndim == 2 else v.reshape(n, 1, 1)

    images, hair_masks, iris_masks = [], [], []
    for start in range(0, n, 256):
        chunk = {k: v[start:start + 256] for k, v in shapes.items()}
        canvas, hair_seen, iris_seen = _render_faces(chunk, image_size)
        images.append(np.clip(np.rint(canvas), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2))
        if return_masks:
            hair_masks.append(hair_seen > 0.9)
            iris_masks.append(iris_seen > 0.9)
    images = (np.concatenate(images) if images
              else np.zeros((0, 3, image_size, image_size), np.uint8))
    result = (torch.from_numpy(images), torch.from_numpy(hair_index.astype(np.int64)),
              torch.from_numpy(eye_index.astype(np.int64)))
    if return_masks:
        masks = {"hair": torch.from_numpy(np.concatenate(hair_masks)) if hair_masks else None,
                 "iris": torch.from_numpy(np.concatenate(iris_masks)) if iris_masks else None}
        return result + (masks,)
    return result


def write_faces(out, n=1000, image_size=None, seed=0, layout="extra_data"):
    """Anime faces in the MLDS on-disk format: images/<id>.jpg + tags.csv
    ("id,<hair> hair <eye> eyes").

    layout="faces" writes the course's older format instead: faces/<id>.jpg (96 px) +
    tags_clean.csv, lines "id,tag:count<TAB>tag:count..." with other tags mixed in, and about one
    image in ten with two hair colours or no eye colour (the loader must drop those, as the
    course's filtering did).
    """
    from PIL import Image

    if layout not in ("extra_data", "faces"):
        raise ValueError(f"layout must be 'extra_data' or 'faces', not {layout!r}")
    image_size = image_size or (64 if layout == "extra_data" else 96)
    images, hair, eyes = faces(n, image_size, seed)
    rng = np.random.default_rng(seed + 1)
    folder = os.path.join(out, "images" if layout == "extra_data" else "faces")
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i in range(n):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(os.path.join(folder, f"{i}.jpg"),
                                                                  quality=95)
        hair_tag, eye_tag = f"{HAIR_COLOURS[hair[i]]} hair", f"{EYE_COLOURS[eyes[i]]} eyes"
        if layout == "extra_data":
            lines.append(f"{i},{hair_tag} {eye_tag}")
            continue
        tags = [hair_tag, eye_tag] + list(rng.choice(["long hair", "short hair", "smile", "blush",
                                                      "open mouth", "twintails", "bangs", "ahoge"],
                                                     3, replace=False))
        ambiguity = rng.random()
        if ambiguity < 0.05:  # two hair colours: ambiguous, dropped by the loader
            tags.append(f"{HAIR_COLOURS[(hair[i] + 1) % len(HAIR_COLOURS)]} hair")
        elif ambiguity < 0.1:  # no eye colour tag: dropped
            tags.remove(eye_tag)
        rng.shuffle(tags)
        lines.append(f"{i}," + "\t".join(f"{t}:{rng.integers(1, 5000)}" for t in tags))
    name = "tags.csv" if layout == "extra_data" else "tags_clean.csv"
    with open(os.path.join(out, name), "w") as f:
        f.write("\n".join(lines) + "\n")
    return out


# ===========================================================================
# Command line
# ===========================================================================
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind, writer in WRITERS.items():
        p = sub.add_parser(kind, help=" ".join(writer.__doc__.split("\n\n")[0].split()))
        p.add_argument("--out", required=True, help="folder to write the dataset to")
        p.add_argument("--n", type=int, default=None,
                       help="how many images/scenes (default: the writer's)")
        p.add_argument("--image-size", type=int, default=None,
                       help="stored image size (default: the real format's)")
        p.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in (("n", args.n), ("image_size", args.image_size)) if v is not None}
    try:
        WRITERS[args.kind](args.out, seed=args.seed, **kwargs)
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {args.kind} to {args.out}")


# Each section registers its on-disk writer here: WRITERS["objects"] = write_iclevr, ...
WRITERS = {}
WRITERS["letters"] = write_letters
WRITERS["objects"] = write_iclevr
WRITERS["faces"] = write_faces

if __name__ == "__main__":
    main()
