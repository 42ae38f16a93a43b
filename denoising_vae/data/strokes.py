"""Handwritten letter forms as pen strokes, and drawing them with a jittered pen.

:data:`FORMS` holds, for each of the 26 capital classes, the ways people
write it as lists of strokes (paths a pen follows): upper-case forms, and
for the 15 classes that EMNIST balanced merges with their lower case (Cohen
et al. 2017), lower-case forms too. :data:`LOWER_CASE_SHARE` is the share
of lower case in each merged class, counted from EMNIST ByClass's test
labels. :func:`draw_forms` draws random variants of the forms: every
control point jittered, strokes shifted so that joins open or overshoot,
ends lengthened or shortened, a Catmull-Rom path through the points, and a
round pen whose width follows a pressure profile along each stroke.

Only numpy and scipy; used by ``synthetic.py``.
"""
from __future__ import annotations

import numpy as np

# Share of lower-case writing in each merged class (EMNIST ByClass test split:
# lower / (upper + lower)); the other 11 classes are upper case only.
LOWER_CASE_SHARE = {
    "C": 0.20, "I": 0.17, "J": 0.34, "K": 0.55, "L": 0.76, "M": 0.24, "O": 0.10, "P": 0.21,
    "S": 0.11, "U": 0.19, "V": 0.37, "W": 0.37, "X": 0.52, "Y": 0.32, "Z": 0.49,
}


def _arc(cx, cy, rx, ry, start, stop, step=30):
    """Points on an ellipse arc from angle ``start`` to ``stop`` (degrees; 0 = right, 90 = down)."""
    count = max(2, int(abs(stop - start) / step) + 1)
    angles = np.radians(np.linspace(start, stop, count))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]


def _c(*points):
    return [tuple(map(float, p)) for p in points]


# Letter forms in a box with y from 0 (top) to 1 (baseline), x to the right.
# Each form is (weight, strokes); a stroke is its control points. The path
# runs smoothly through the points; a point given twice is a corner.
# Lower-case forms of letters whose small form has the capital's shape
# (c o s v w x z) repeat the capital's strokes at x-height proportions.
_O = _arc(0.4, 0.5, 0.4, 0.5, -100, 275)
_U_BOTTOM = _arc(0.35, 0.6, 0.35, 0.4, 180, 0, step=45)  # EMNIST's U is round at the bottom
FORMS = {
    "A": {"upper": [
        (3, [_c((0, 1), (0.4, 0), (0.4, 0), (0.8, 1)), _c((0.16, 0.62), (0.66, 0.62))]),
        (2, [_c((0, 1), (0.32, 0.08), (0.4, 0), (0.48, 0.08), (0.8, 1)), _c((0.14, 0.6), (0.68, 0.6))]),
        (1, [_c((0.4, 0), (0, 1)), _c((0.4, 0), (0.8, 1)), _c((0.18, 0.55), (0.62, 0.55))]),
        # A wide round top, the bar drawn through both legs: many of EMNIST's
        # A, which a classifier trained on pointed A alone reads as H.
        (2, [_c((0, 1), (0.1, 0.3), (0.25, 0.03), (0.4, 0), (0.55, 0.03), (0.7, 0.3), (0.8, 1)),
             _c((-0.06, 0.58), (0.86, 0.56))]),
    ]},
    "B": {"upper": [
        (2, [_c((0, 0), (0, 1)), _c((0, 0), (0.4, 0), (0.58, 0.12), (0.56, 0.34), (0.36, 0.47), (0, 0.47)),
             _c((0.05, 0.47), (0.48, 0.47), (0.68, 0.6), (0.68, 0.84), (0.48, 1), (0, 1))]),
        (1, [_c((0, 1), (0, 0), (0, 0), (0.42, 0), (0.6, 0.14), (0.5, 0.38), (0.2, 0.48), (0.2, 0.48),
                (0.6, 0.56), (0.7, 0.8), (0.5, 1), (0, 1))]),
    ]},
    "C": {"upper": [
        (2, [_c(*_arc(0.45, 0.5, 0.45, 0.5, -40, -315))]),
        (1, [_c(*_arc(0.3, 0.5, 0.3, 0.5, -60, -300))]),  # narrow, like a bracket
        (1, [_c((0.5, 0.12), (0.56, 0.02), (0.45, 0), *_arc(0.4, 0.52, 0.4, 0.48, -100, -320))]),  # hooked top
    ], "lower": [(1, [_c(*_arc(0.5, 0.5, 0.5, 0.5, -40, -315))])]},
    "D": {"upper": [
        (2, [_c((0, 0), (0, 1)), _c((0, 0), (0.3, 0), (0.62, 0.18), (0.7, 0.5), (0.6, 0.82), (0.3, 1), (0, 1))]),
        (1, [_c((0, 1), (0, 0), (0, 0), (0.35, 0.02), (0.7, 0.3), (0.68, 0.72), (0.35, 0.98), (0.02, 1))]),
    ]},
    "E": {"upper": [
        (3, [_c((0.65, 0), (0, 0), (0, 0), (0, 1), (0, 1), (0.65, 1)), _c((0, 0.5), (0.5, 0.5))]),
        (1, [_c((0, 0), (0, 1)), _c((0, 0), (0.62, 0)), _c((0, 0.5), (0.5, 0.5)), _c((0, 1), (0.65, 1))]),
        (1, [_c(*_arc(0.38, 0.26, 0.36, 0.26, -30, -270), *_arc(0.42, 0.75, 0.42, 0.25, -90, -330)[1:])]),
    ]},
    "F": {"upper": [
        (3, [_c((0.65, 0), (0, 0), (0, 0), (0, 1)), _c((0, 0.48), (0.5, 0.48))]),
        (1, [_c((0, 0), (0, 1)), _c((0, 0), (0.65, 0)), _c((0, 0.48), (0.5, 0.48))]),
        # Many write F like a script f: a hooked stem, crossed.
        (2, [_c((0.7, 0.08), (0.55, 0), (0.38, 0.08), (0.33, 0.45), (0.3, 1)), _c((0.05, 0.45), (0.62, 0.43))]),
    ]},
    "G": {"upper": [
        (2, [_c(*_arc(0.45, 0.5, 0.45, 0.5, -40, -360)), _c((0.5, 0.55), (0.92, 0.55))]),
        (1, [_c(*_arc(0.45, 0.5, 0.45, 0.5, -40, -350), (0.9, 0.5), (0.9, 0.5), (0.55, 0.5))]),
        (1, [_c(*_arc(0.45, 0.5, 0.45, 0.5, -40, -345), (0.9, 0.55), (0.9, 0.55), (0.9, 1))]),
    ]},
    "H": {"upper": [
        (3, [_c((0, 0), (0, 1)), _c((0.7, 0), (0.7, 1)), _c((0, 0.5), (0.7, 0.5))]),
        (1, [_c((0, 0), (0, 1)), _c((0, 0.5), (0.7, 0.5)), _c((0.7, 0), (0.7, 1))]),
    ]},
    "I": {"upper": [
        # A bar written 0.7 of a capital, the l (_LOWER_SIZE) 1.4 capitals:
        # enlarged to 24 pixels, I bars come out wider than l bars (a little
        # more than in EMNIST) and, blurrier, shorter above half intensity.
        # Width is the clearest cue between a bar I and a bar l
        # (docs/offline-letters.md).
        (4, [_c((0.3, 0.3), (0.3, 1))]),
        (1, [_c((0.3, 0), (0.3, 1)), _c((0, 0), (0.6, 0)), _c((0, 1), (0.6, 1))]),
    ], "lower": [
        (1, [_c((0.3, 0.32), (0.3, 1)), _c((0.3, 0.0), (0.3, 0.06))]),
    ]},
    "J": {"upper": [
        (2, [_c((0.6, 0), (0.6, 0.72), (0.5, 0.95), (0.3, 1), (0.1, 0.92), (0.02, 0.75))]),
        (1, [_c((0.6, 0), (0.6, 0.72), (0.5, 0.95), (0.3, 1), (0.1, 0.92), (0.02, 0.75)), _c((0.25, 0), (0.9, 0))]),
    ], "lower": [
        (1, [_c((0.55, 0.3), (0.55, 0.82), (0.45, 1), (0.25, 1.02), (0.08, 0.9)), _c((0.55, 0.02), (0.55, 0.08))]),
    ]},
    "K": {"upper": [
        (2, [_c((0, 0), (0, 1)), _c((0.62, 0), (0, 0.55)), _c((0.18, 0.42), (0.68, 1))]),
        (2, [_c((0, 0), (0, 1)), _c((0.62, 0), (0.02, 0.5), (0.02, 0.5), (0.66, 1))]),
    ], "lower": [
        (1, [_c((0, 0), (0, 1)), _c((0.5, 0.38), (0.02, 0.7), (0.02, 0.7), (0.55, 1))]),
        (1, [_c((0, 0), (0, 1)), _c((0.02, 0.75), (0.4, 0.4), (0.55, 0.5), (0.3, 0.68), (0.1, 0.7), (0.1, 0.7),
                                   (0.55, 1))]),
    ]},
    "L": {"upper": [
        (1, [_c((0, 0), (0, 1), (0, 1), (0.6, 1))]),
    ], "lower": [
        (2, [_c((0.3, 0), (0.3, 1))]),
        (1, [_c((0.4, 0), (0.32, 0.5), (0.29, 0.88), (0.42, 1.0))]),
        # A looped l: one in 60 of EMNIST's L has a hole, against one in 8 at weight 1.
        (0.15, [_c((0.0, 0.85), (0.3, 0.45), (0.42, 0.12), (0.33, 0), (0.2, 0.12), (0.18, 0.6), (0.24, 0.95),
                   (0.45, 1))]),
    ]},
    "M": {"upper": [
        (2, [_c((0, 1), (0, 0), (0, 0), (0.4, 0.62), (0.4, 0.62), (0.8, 0), (0.8, 0), (0.8, 1))]),
        (2, [_c((0, 1), (0.12, 0), (0.12, 0), (0.4, 0.7), (0.4, 0.7), (0.68, 0), (0.68, 0), (0.8, 1))]),
        (1, [_c((0, 1), (0.05, 0.2), (0.15, 0), (0.3, 0.2), (0.4, 0.6), (0.5, 0.2), (0.65, 0), (0.75, 0.2),
                (0.8, 1))]),
    ], "lower": [
        (1, [_c((0, 0.4), (0, 1)), _c((0, 0.6), (0.12, 0.42), (0.28, 0.4), (0.38, 0.55), (0.38, 1)),
             _c((0.38, 0.6), (0.5, 0.42), (0.66, 0.4), (0.76, 0.55), (0.76, 1))]),
    ]},
    "N": {"upper": [
        (3, [_c((0, 1), (0, 0), (0, 0), (0.65, 1), (0.65, 1), (0.65, 0))]),
        (1, [_c((0, 0), (0, 1)), _c((0, 0), (0.65, 1)), _c((0.65, 1), (0.65, 0))]),
    ]},
    "O": {"upper": [(1, [_c(*_O)])],
          "lower": [(1, [_c(*_arc(0.45, 0.5, 0.45, 0.5, -100, 275))])]},
    "P": {"upper": [
        (2, [_c((0, 0), (0, 1)), _c((0, 0), (0.42, 0), (0.6, 0.13), (0.6, 0.36), (0.42, 0.5), (0, 0.5))]),
        (1, [_c((0, 1), (0, 0), (0, 0), (0.42, 0), (0.62, 0.16), (0.55, 0.42), (0.3, 0.52), (0.02, 0.5))]),
    ], "lower": [
        (1, [_c((0, 0.3), (0, 1)), _c((0, 0.35), (0.2, 0.28), (0.5, 0.32), (0.58, 0.5), (0.45, 0.66),
                                     (0.15, 0.68), (0.02, 0.62))]),
    ]},
    "Q": {"upper": [
        (2, [_c(*_O), _c((0.45, 0.72), (0.88, 1.08))]),
        (1, [_c(*_O), _c((0.3, 0.85), (0.55, 0.98), (0.95, 1.0))]),
        (1, [_c(*_arc(0.4, 0.48, 0.4, 0.48, -100, 240), (0.45, 0.85), (0.75, 1.05))]),
    ]},
    "R": {"upper": [
        (2, [_c((0, 0), (0, 1)), _c((0, 0), (0.42, 0), (0.6, 0.13), (0.6, 0.36), (0.42, 0.5), (0, 0.5)),
             _c((0.25, 0.5), (0.68, 1))]),
        (2, [_c((0, 1), (0, 0), (0, 0), (0.42, 0), (0.6, 0.14), (0.55, 0.4), (0.1, 0.52), (0.1, 0.52),
                (0.68, 1))]),
        (2, [_c((0, 0), (0, 1)), _c((0, 0.02), (0.4, 0), (0.56, 0.16), (0.42, 0.36), (0.04, 0.42)),
             _c((0.06, 0.42), (0.66, 1))]),  # small bowl, the leg from the stem
    ]},
    "S": {"upper": [(1, [_c((0.65, 0.12), (0.42, 0), (0.15, 0.05), (0.06, 0.26), (0.3, 0.47), (0.58, 0.63),
                            (0.68, 0.84), (0.48, 1), (0.2, 0.98), (0, 0.86))])],
          "lower": [(1, [_c((0.7, 0.12), (0.45, 0), (0.17, 0.05), (0.08, 0.26), (0.34, 0.47), (0.62, 0.63),
                            (0.73, 0.84), (0.52, 1), (0.22, 0.98), (0, 0.86))])]},
    "T": {"upper": [
        (3, [_c((0, 0), (0.8, 0)), _c((0.4, 0), (0.4, 1))]),
        (1, [_c((0.4, 0), (0.4, 1)), _c((0, 0.02), (0.8, 0))]),
    ]},
    "U": {"upper": [
        (1, [_c((0, 0), *_U_BOTTOM, (0.7, 0))]),
    ], "lower": [
        (1, [_c((0, 0), *_U_BOTTOM, (0.7, 0)), _c((0.7, 0.02), (0.7, 1))]),
    ]},
    "V": {"upper": [
        (3, [_c((0, 0), (0.35, 1), (0.35, 1), (0.7, 0))]),
        (1, [_c((0, 0), (0.25, 0.8), (0.35, 1), (0.45, 0.8), (0.7, 0))]),
    ], "lower": [(1, [_c((0, 0), (0.38, 1), (0.38, 1), (0.76, 0))])]},
    "W": {"upper": [
        (3, [_c((0, 0), (0.2, 1), (0.2, 1), (0.42, 0.25), (0.42, 0.25), (0.64, 1), (0.64, 1), (0.84, 0))]),
        (1, [_c((0, 0), (0.12, 0.85), (0.22, 1), (0.34, 0.7), (0.42, 0.3), (0.5, 0.7), (0.62, 1), (0.72, 0.85),
                (0.84, 0))]),
        (1, [_c((0, 0), (0.03, 0.75), (0.2, 1), (0.36, 0.8), (0.42, 0.35), (0.48, 0.8), (0.64, 1), (0.81, 0.75),
                (0.84, 0))]),  # rounded, like two joined u
    ], "lower": [(1, [_c((0, 0), (0.22, 1), (0.22, 1), (0.44, 0.3), (0.44, 0.3), (0.66, 1), (0.66, 1),
                         (0.88, 0))])]},
    "X": {"upper": [(1, [_c((0, 0), (0.7, 1)), _c((0.7, 0), (0, 1))])],
          "lower": [(1, [_c((0, 0), (0.78, 1)), _c((0.78, 0), (0, 1))])]},
    "Y": {"upper": [
        (3, [_c((0, 0), (0.35, 0.5)), _c((0.7, 0), (0.35, 0.5), (0.35, 0.5), (0.35, 1))]),
        (1, [_c((0, 0), (0.35, 0.5), (0.35, 0.5), (0.7, 0)), _c((0.35, 0.5), (0.35, 1))]),
    ], "lower": [
        (1, [_c((0, 0.0), (0.32, 0.55)), _c((0.7, 0.0), (0.35, 0.62), (0.1, 1.1))]),
        (1, [_c((0, 0), (0, 0.4), (0.15, 0.55), (0.45, 0.55), (0.62, 0.4)), _c((0.62, 0), (0.62, 0.8),
                                                                              (0.45, 1.05), (0.15, 1.0))]),
    ]},
    "Z": {"upper": [
        (3, [_c((0, 0), (0.7, 0), (0.7, 0), (0, 1), (0, 1), (0.7, 1))]),
        (1, [_c((0, 0), (0.7, 0), (0.7, 0), (0, 1), (0, 1), (0.7, 1)), _c((0.15, 0.5), (0.55, 0.5))]),
    ], "lower": [(1, [_c((0, 0), (0.78, 0), (0.78, 0), (0, 1), (0, 1), (0.78, 1))])]},
}


PEN_RADIUS = (0.032, 0.082)  # range of the pen's radius, capital heights (1.4-3.6 pixels on a 44-pixel capital)
JITTER = (0.02, 0.08)  # range of the control points' jitter (standard deviation, share of the form's size)


def _catmull_rom(points, samples=48):
    """Uniform Catmull-Rom spline through ``points`` (K, 2): (samples * (K - 1) + 1, 2) points."""
    padded = np.concatenate([points[:1], points, points[-1:]])
    p0, p1, p2, p3 = (padded[i:len(padded) - 3 + i, None, :] for i in range(4))  # (K - 1, 1, 2) each
    t = np.linspace(0, 1, samples, endpoint=False)[None, :, None]
    curve = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                   + (3 * p1 - p0 - 3 * p2 + p3) * t * t * t)
    return np.concatenate([curve.reshape(-1, 2), points[-1:]])


# Handwritten M, N, W and U run wider than the boxes above (EMNIST's M is
# about 1.5 times as wide as high): their x coordinates are stretched.
_STRETCH = {"M": 1.4, "N": 1.3, "W": 1.45, "U": 1.05}

# Height of each lower-case form on the paper, in capital heights: x-height
# letters are about half a capital, those with an ascender or descender
# more. EMNIST frames every letter to the same 24 pixels, so a small letter
# is enlarged more and its strokes come out thicker; drawing the forms at
# their written size with one pen reproduces that.
_LOWER_SIZE = {"C": 0.55, "I": 0.8, "J": 0.85, "K": 1.0, "L": 1.4, "M": 0.55, "O": 0.55, "P": 0.8, "S": 0.55,
               "U": 0.55, "V": 0.55, "W": 0.55, "X": 0.55, "Y": 0.8, "Z": 0.55}


# Each letter's overall written size, from its stroke width. People write
# O smaller or heavier than Q, so EMNIST's O strokes are a quarter thicker
# and its Q strokes a fifth thinner than those of the same pen at full size.
# The sizes make the generator's median stroke width (ink / skeleton length)
# per class equal EMNIST's, as measured on the EMNIST sample's training
# capitals (docs/offline-letters-tuning.md); the framing's blur
# (synthetic.PAPER_BLUR) is part of that match.
_WRITTEN_SIZE = {"A": 0.97, "B": 1.09, "C": 0.9, "E": 0.83, "F": 1.13, "G": 1.06, "H": 0.89, "J": 1.21, "K": 1.14,
                 "L": 0.96, "M": 0.83, "N": 0.79, "O": 0.68, "P": 1.19, "Q": 1.32, "S": 0.9, "T": 1.07, "U": 0.83,
                 "V": 0.97, "W": 1.13, "X": 0.96, "Y": 1.31, "Z": 0.85}


def form_list():
    """Every form as ``(letter_index, is_lower, weight, strokes)``, in a fixed order.

    Strokes are float64 (K, 2) control points (x, y) in capital heights, at
    the size the form is written.
    """
    out = []
    for index, letter in enumerate(sorted(FORMS)):
        for case in ("upper", "lower"):
            size = _LOWER_SIZE.get(letter, 1.0) if case == "lower" else 1.0
            scale = np.array([_STRETCH.get(letter, 1.0), 1.0]) * size * _WRITTEN_SIZE.get(letter, 1.0)
            for weight, strokes in FORMS[letter].get(case, []):
                out.append((index, case == "lower", weight, [np.asarray(s, np.float64) * scale for s in strokes]))
    return out


def written_size(strokes):
    """The longer side of a form's control points, in capital heights (a list of (K, 2) strokes)."""
    corners = np.concatenate(strokes)
    return float((corners.max(0) - corners.min(0)).max())


def draw_forms(strokes_list, rng, canvas=64, extent=44):
    """Draw one random variant of each form (a list of strokes) on a ``canvas`` x ``canvas`` grid.

    Returns float32 (len(strokes_list), canvas, canvas) in [0, 1]: the
    longer side of the ink's skeleton spans ``extent`` pixels, centred.
    """
    from scipy import ndimage

    out = np.zeros((len(strokes_list), canvas, canvas), np.float32)
    for g, strokes in enumerate(strokes_list):
        size = written_size(strokes)  # jitter scales with the written size
        jitter = rng.uniform(*JITTER) * size
        paths, radii = [], []
        pen = rng.uniform(*PEN_RADIUS)  # in capital heights, so small forms are enlarged with their pen
        for stroke in strokes:
            points = stroke + rng.normal(0, jitter, stroke.shape) + rng.normal(0, 0.03 * size, (1, 2))
            # Lengthen or shorten the ends (overshooting or open joins).
            for end, inner in ((0, 1), (-1, -2)):
                direction = points[end] - points[inner]
                points[end] = points[end] + direction * rng.uniform(-0.12, 0.15)
            path = _catmull_rom(points)
            t = np.linspace(0, 1, len(path))
            # Pen pressure: a slow swell along the stroke, lighter at its ends.
            pressure = 1 + 0.2 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * t + rng.uniform()))
            pressure *= 0.75 + 0.25 * np.minimum(1, np.minimum(t, 1 - t) / 0.12)
            paths.append(path)
            radii.append(pen * pressure)
        path, radius = np.concatenate(paths), np.concatenate(radii)
        low, high = path.min(0), path.max(0)
        scale = extent / max((high - low).max(), 1e-3)
        radius = radius * scale
        pixels = np.rint((path - (low + high) / 2) * scale + canvas / 2).astype(np.int64)
        pixels = np.clip(pixels, 0, canvas - 1)
        skeleton = np.zeros((canvas, canvas), bool)
        radius_map = np.zeros((canvas, canvas), np.float32)
        # (x, y) -> (row, col); the widest pass through a pixel wins.
        np.maximum.at(radius_map, (pixels[:, 1], pixels[:, 0]), radius.astype(np.float32))
        skeleton[pixels[:, 1], pixels[:, 0]] = True
        distance, (rows, cols) = ndimage.distance_transform_edt(~skeleton, return_indices=True)
        out[g] = np.clip(radius_map[rows, cols] + 0.5 - distance, 0, 1)
    return out
