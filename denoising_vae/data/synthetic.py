"""Synthetic handwriting-like capital letters, the offline stand-in for EMNIST.

:func:`synthetic_letters` renders uint8 (N, 28, 28) letters for labels 0-25
(A-Z). Most are pen-stroke forms of ``strokes.py`` (upper case, and
lower case in the 15 classes EMNIST balanced merges, at their measured
shares); :data:`FONT_SHARE` of the upper case are glyphs of matplotlib's
fonts redrawn along their skeletons with round pens. Each is rotated,
slanted, stretched and elastically distorted, then framed as EMNIST was
(Cohen et al. 2017). ``benchmarks/realism.py`` measures how EMNIST-like
the result is.

It needs nothing beyond numpy, scipy and matplotlib, downloads nothing, and
knows nothing of EMNIST's files or noise (``sources.py``, ``noise.py``); it keeps its
glyph bank in a folder when given one.
"""
from __future__ import annotations

import hashlib
import math
import os
import sys
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core import files
from ..core.constants import IMAGE_SIZE, LETTERS
from . import strokes as letter_strokes

# Faces of matplotlib's bundled fonts: sans, serif, mono, bold and slanted.
SYNTHETIC_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "cmss10.ttf", "cmr10.ttf", "cmtt10.ttf",
)
_CANVAS = 64          # side of the high-resolution glyph canvas (pixels)
_FONT_PIXELS = 40     # font size on that canvas
_PEN_RADII = (1.0, 1.5, 2.2)  # pen radius of redrawn strokes, canvas pixels
_BOX = IMAGE_SIZE - 4  # EMNIST: the glyph fills a 24x24 square inside a 2-pixel border
_STROKE_EXTENT = 44  # canvas pixels spanned by a pen-stroke form's longer side
_STROKE_VARIANTS = 160  # pen-stroke variants per letter and case in the bank
_STROKE_SEED = 20171  # the bank is drawn once with this seed: the same in every process
# EMNIST blurred each scan (Gaussian, sigma 1 scan pixel) before framing it
# in 24 pixels (Cohen et al. 2017): on paper the blur is fixed like the pen,
# so a letter written small, enlarged more, comes out blurrier and with a
# wider faint rim inside its box, which the box includes. These blurs and the
# box threshold reproduce the spans of EMNIST's ink per letter
# (docs/offline-letters.md).
PAPER_BLUR = 0.025  # capital heights: the scan's blur, enlarged with the letter
CANVAS_BLUR = 1.2  # canvas pixels: resampling's blur, the same for every letter
BOX_THRESHOLD = 0.05  # the box is framed around ink above this (of the glyph's peak): the faint rim included
FONT_SHARE = 0.15  # share of upper-case letters resampled from font glyphs rather than pen-stroke forms
# Per-image geometry, chosen by measuring with benchmarks/realism.py
# (docs/offline-letters-tuning.md records what each setting was worth).
# EMNIST's letters lean right.
ROTATION = 0.12  # standard deviation of the rotation, radians
SLANT = (-0.22, 0.26)  # mean and standard deviation of the shear (column shift per row down; < 0 leans right)
ASPECT = (0.12, 0.22)  # mean and standard deviation of log(width / height) change
ELASTIC = (0.5, 2.0)  # range of the elastic displacement's scale, output pixels
# Glyph kinds in the bank.
UPPER_STROKES, LOWER_STROKES, FONT = 0, 1, 2
# Lower-case share per label 0-25 (EMNIST balanced merges 15 letters with their lower case).
LOWER_CASE_SHARE = np.array([letter_strokes.LOWER_CASE_SHARE.get(letter, 0.0) for letter in LETTERS])


def _thin(binary):
    """Zhang & Suen (1984) thinning of a batch of binary images (B, H, W) to 1-pixel skeletons."""
    image = np.pad(binary.astype(np.uint8), ((0, 0), (1, 1), (1, 1)))
    for _ in range(100):
        changed = False
        for step in (0, 1):
            p = image
            # Neighbours P2..P9 clockwise from north, as in the paper.
            n = [p[:, :-2, 1:-1], p[:, :-2, 2:], p[:, 1:-1, 2:], p[:, 2:, 2:],
                 p[:, 2:, 1:-1], p[:, 2:, :-2], p[:, 1:-1, :-2], p[:, :-2, :-2]]
            count = sum(v.astype(np.int32) for v in n)
            transitions = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            if step == 0:
                first, second = n[0] * n[2] * n[4], n[2] * n[4] * n[6]
            else:
                first, second = n[0] * n[2] * n[6], n[0] * n[4] * n[6]
            delete = (p[:, 1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (transitions == 1) \
                & (first == 0) & (second == 0)
            if delete.any():
                image[:, 1:-1, 1:-1][delete] = 0
                changed = True
        if not changed:
            break
    return image[:, 1:-1, 1:-1].astype(bool)


def _font_glyphs():
    """Every letter in every face of :data:`SYNTHETIC_FONTS`, redrawn along its skeleton with round pens.

    Handwriting has strokes of even width, so each printed glyph's skeleton
    (Zhang & Suen thinning) is redrawn with pens of several radii; the
    printed outline itself is not kept (it looks like print).

    Returns float32 (G, 64, 64) in [0, 1] and int64 (G,) letter indices.
    """
    import matplotlib
    from matplotlib import ft2font
    from scipy import ndimage

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    glyphs, letters = [], []
    for face in SYNTHETIC_FONTS:
        font = ft2font.FT2Font(str(font_dir / face))
        for index, letter in enumerate(LETTERS):
            font.set_size(_FONT_PIXELS, 72)
            font.set_text(letter, 0.0)
            font.draw_glyphs_to_bitmap(antialiased=True)
            image = np.asarray(font.get_image(), dtype=np.float32) / 255
            rows, cols = np.nonzero(image > 0.1)
            image = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            canvas = np.zeros((_CANVAS, _CANVAS), np.float32)
            top, left = (_CANVAS - image.shape[0]) // 2, (_CANVAS - image.shape[1]) // 2
            canvas[top:top + image.shape[0], left:left + image.shape[1]] = image
            glyphs.append(canvas)
            letters.append(index)
    glyphs = np.stack(glyphs)
    # Distance to the skeleton, so that each pen is a threshold of it.
    skeleton = _thin(glyphs > 0.5)
    distance = np.stack([ndimage.distance_transform_edt(~s) for s in skeleton]).astype(np.float32)
    variants = [np.clip(radius + 0.5 - distance, 0, 1) for radius in _PEN_RADII]
    return np.concatenate(variants), np.tile(np.asarray(letters, np.int64), len(variants))


def _stroke_glyphs():
    """Random variants of every pen-stroke form of ``strokes.FORMS``, on the 64x64 canvas.

    Each (letter, case) gets :data:`_STROKE_VARIANTS` variants, shared among
    its forms by their weights; drawn with a fixed seed, so the bank is the
    same in every process.

    Returns float32 (G, 64, 64) in [0, 1], int64 (G,) letter indices, bool
    (G,) lower case and float64 (G,) written size (the longer side of the
    form's control points, capital heights).
    """
    rng = np.random.default_rng(_STROKE_SEED)
    strokes, letters, lower = [], [], []
    forms = letter_strokes.form_list()
    for letter in range(len(LETTERS)):
        for case in (False, True):
            group = [(weight, form) for index, is_lower, weight, form in forms if index == letter and is_lower == case]
            if not group:
                continue
            weights = np.array([weight for weight, _ in group], np.float64)
            counts = np.floor(_STROKE_VARIANTS * weights / weights.sum()).astype(int)
            counts[: _STROKE_VARIANTS - counts.sum()] += 1
            for count, (_, form) in zip(counts, group):
                strokes += [form] * count
                letters += [letter] * count
                lower += [case] * count
    images = letter_strokes.draw_forms(strokes, rng, canvas=_CANVAS, extent=_STROKE_EXTENT)
    written = np.array([letter_strokes.written_size(form) for form in strokes])
    return images, np.asarray(letters, np.int64), np.asarray(lower, bool), written


def _glyph_bank():
    """The glyphs letters are resampled from: pen-stroke forms and pen-redrawn font glyphs, 64x64.

    Each glyph is blurred as EMNIST's scans were (:data:`PAPER_BLUR`, enlarged
    with the glyph, and :data:`CANVAS_BLUR`) and scaled to peak 1; font glyphs
    are blurred as a full-size capital.

    Returns ``(bank, hull, letter, kind)``: float32 (G, 64, 64) in [0, 1]
    with a blank rim; float32 (G, 16, 2) extreme ink points (row, col)
    along 8 directions, for the bounding box of a transformed glyph; int64
    (G,) letter index; int64 (G,) kind: :data:`UPPER_STROKES`,
    :data:`LOWER_STROKES` or :data:`FONT`.
    """
    from scipy import ndimage

    stroke_images, stroke_letters, stroke_lower, written = _stroke_glyphs()
    font_images, font_letters = _font_glyphs()
    images = np.concatenate([stroke_images, font_images])
    letters = np.concatenate([stroke_letters, font_letters])
    kind = np.concatenate([np.where(stroke_lower, LOWER_STROKES, UPPER_STROKES), np.full(len(font_letters), FONT)])
    pixels_per_capital = _STROKE_EXTENT / np.concatenate([written, np.ones(len(font_letters))])
    sigmas = np.sqrt(CANVAS_BLUR ** 2 + (PAPER_BLUR * pixels_per_capital) ** 2)
    bank = np.stack([ndimage.gaussian_filter(image, sigma) for image, sigma in zip(images, sigmas)])
    bank /= bank.max(axis=(1, 2), keepdims=True)
    # Held at float16 precision, as the stored bank is: a stored and a fresh bank render the same letters.
    bank = bank.astype(np.float16).astype(np.float32)
    angles = np.linspace(0, np.pi, 8, endpoint=False)
    directions = np.stack([np.sin(angles), np.cos(angles)], axis=1)  # (8, 2) as (row, col)
    hull = np.zeros((len(bank), 16, 2), np.float32)
    for g, image in enumerate(bank):
        points = np.argwhere(image > BOX_THRESHOLD).astype(np.float32)
        projections = points @ directions.T
        hull[g] = np.concatenate([points[projections.argmin(0)], points[projections.argmax(0)]])
    return bank, hull, letters, kind


_BANK = None
_BANK_LOCK = threading.Lock()


def _bank(cache_dir=None):
    """:func:`_glyph_bank`, built once per process; kept in ``cache_dir`` between processes if given."""
    global _BANK
    with _BANK_LOCK:
        if _BANK is None:
            _BANK = _glyph_bank() if cache_dir is None else _stored_bank(Path(cache_dir))
    return _BANK


def generator_key():
    """What the letters depend on: the code that draws them and the libraries that render them (20 hex digits).

    Keys the stored glyph bank here and the prepared synthetic sets in ``sources``, so that a
    changed generator never serves letters drawn by an earlier one.
    """
    import matplotlib
    import scipy

    digest = hashlib.sha256()
    for module in (letter_strokes, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(f"{np.__version__}|{scipy.__version__}|{matplotlib.__version__}".encode())
    return digest.hexdigest()[:20]


def _stored_bank(cache_dir: Path):
    """The glyph bank from ``cache_dir/glyph-bank-KEY.npz``, built and stored there when absent.

    Building takes several seconds; a sweep's workers and every later run
    load it in a fraction of that. A file that cannot be read is rebuilt; a
    folder that cannot be written leaves the bank in memory only.
    """
    path = cache_dir / f"glyph-bank-{generator_key()}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            bank, hull, letter, kind = (stored[name] for name in ("bank", "hull", "letter", "kind"))
        if bank.dtype == np.float16 and bank.shape[1:] == (_CANVAS, _CANVAS) \
                and len(bank) == len(hull) == len(letter) == len(kind):
            return bank.astype(np.float32), hull, letter, kind
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # absent or damaged: build it
    built = _glyph_bank()
    try:
        with files.replacing(path) as partial, open(partial, "wb") as file:
            np.savez_compressed(file, bank=built[0].astype(np.float16), hull=built[1], letter=built[2], kind=built[3])
    except OSError:
        pass  # an unwritable cache only costs the next process the build
    return built


def _interpolation_matrix(coarse, fine):
    """(fine, coarse) linear-interpolation weights stretching ``coarse`` knots over ``fine`` pixels."""
    positions = np.linspace(0, coarse - 1, fine)
    low = np.minimum(np.floor(positions).astype(int), coarse - 2)
    frac = positions - low
    matrix = np.zeros((fine, coarse), np.float32)
    matrix[np.arange(fine), low] = 1 - frac
    matrix[np.arange(fine), low + 1] = frac
    return matrix


def synthetic_letters(labels, seed, bank_cache=None):
    """Render handwriting-like capitals for ``labels``; uint8 (N, 28, 28) upright.

    ``seed`` is an int or a tuple of ints (``numpy.random.SeedSequence`` entropy).
    ``bank_cache``: a folder where the glyph bank is kept between processes
    (``None``: built in memory, once per process).

    Each image: a glyph of :func:`_glyph_bank` chosen by
    :func:`choose_glyphs` (case, then pen-stroke form or font), a
    random affine map (rotation, shear, aspect ratio), a smooth elastic
    displacement (Simard et al. 2003), then framed like EMNIST (Cohen et al.
    2017): cropped to the ink, scaled keeping the aspect ratio so the longer
    side fills 24 pixels, centred in 28x28. Everything is one bilinear
    resampling per image, vectorised over the batch.
    """
    labels = np.asarray(labels, dtype=np.int64)
    bank, hull, bank_letter, bank_kind = _bank(bank_cache)
    pools = glyph_pools(bank_letter, bank_kind)
    chunks = np.array_split(np.arange(len(labels)), max(1, math.ceil(len(labels) / 4096)))
    seeds = np.random.SeedSequence(seed).spawn(len(chunks))
    out = np.empty((len(labels), IMAGE_SIZE, IMAGE_SIZE), np.uint8)

    def render(chunk, chunk_seed):
        out[chunk] = _render_chunk(labels[chunk], np.random.default_rng(chunk_seed), bank, hull, pools)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(render, chunks, seeds))
    return out


def choose_glyphs(labels, rng, pools):
    """Bank indices (N,) for ``labels``: lower case with the letter's :data:`LOWER_CASE_SHARE`,
    else a font glyph with probability :data:`FONT_SHARE`, else an upper-case pen-stroke form.

    ``pools[letter][kind]`` lists the bank indices of that letter and kind.
    """
    n = len(labels)
    lower = rng.random(n) < LOWER_CASE_SHARE[labels]
    font = rng.random(n) < FONT_SHARE
    kinds = np.where(lower, LOWER_STROKES, np.where(font, FONT, UPPER_STROKES))
    picks = rng.integers(0, 1 << 30, n)
    return np.array([pools[letter][kind][pick % len(pools[letter][kind])]
                     for letter, kind, pick in zip(labels, kinds, picks)], np.int64)


def glyph_pools(letter, kind):
    """``pools[letter][kind]``: the bank indices of each letter (0-25) and kind, for :func:`choose_glyphs`."""
    return [[np.flatnonzero((letter == index) & (kind == wanted)) for wanted in (UPPER_STROKES, LOWER_STROKES, FONT)]
            for index in range(len(LETTERS))]


def _render_chunk(labels, rng, bank, hull, pools):
    n = len(labels)
    glyph = choose_glyphs(labels, rng, pools)
    # Affine map canvas -> "paper" acting on (row, col): rotation, slant, aspect change.
    angle = rng.normal(0, ROTATION, n)
    shear = rng.normal(*SLANT, n)
    aspect = np.exp(rng.normal(*ASPECT, n))  # width / height
    cos, sin = np.cos(angle), np.sin(angle)
    height, width = 1 / np.sqrt(aspect), np.sqrt(aspect)
    forward = np.empty((n, 2, 2))
    forward[:, 0, 0] = cos * height - sin * shear
    forward[:, 0, 1] = -sin * width
    forward[:, 1, 0] = sin * height + cos * shear
    forward[:, 1, 1] = cos * width
    # Bounding box of the transformed ink, from the glyph's extreme points.
    centre = bank.shape[1] / 2
    points = np.matmul(hull[glyph] - centre, forward.transpose(0, 2, 1))  # (n, 16, 2)
    low, high = points.min(1), points.max(1)
    box_centre = (low + high) / 2
    scale = _BOX / np.maximum((high - low).max(1), 1.0)  # output pixels per paper unit
    # Smooth elastic displacement of the output grid, in output pixels.
    interp = _interpolation_matrix(4, IMAGE_SIZE)
    coarse = rng.normal(0, 1, (n, 2, 4, 4)).astype(np.float32) * rng.uniform(*ELASTIC, (n, 1, 1, 1)).astype(
        np.float32)
    displacement = interp @ coarse @ interp.T  # (n, 2, 28, 28)
    grid = np.arange(IMAGE_SIZE, dtype=np.float32) - (IMAGE_SIZE - 1) / 2
    inverse = np.linalg.inv(forward).astype(np.float32)
    offset = (np.einsum("nij,nj->ni", inverse, box_centre) + centre).astype(np.float32)  # (n, 2)
    inverse /= scale.astype(np.float32)[:, None, None]
    paper_rows = grid[None, :, None] + displacement[:, 0]  # (n, 28, 28)
    paper_cols = grid[None, None, :] + displacement[:, 1]
    rows = inverse[:, 0, 0, None, None] * paper_rows + inverse[:, 0, 1, None, None] * paper_cols \
        + offset[:, 0, None, None]
    cols = inverse[:, 1, 0, None, None] * paper_rows + inverse[:, 1, 1, None, None] * paper_cols \
        + offset[:, 1, None, None]
    image = _bilinear(bank, glyph, rows, cols)
    # Ink intensity: EMNIST strokes have saturated cores and edges about a
    # pixel wide, so stretch the contrast; a few are fainter. The stretch
    # gives EMNIST's ink per letter: the sum of intensities 136 against its
    # 138, the pixels' binary entropy (the floor of a cross-entropy
    # reconstruction loss) 84.0 nats against 84.1 (6,271 capitals).
    image /= np.maximum(image.max(axis=(1, 2), keepdims=True), 1e-6)
    image = np.clip(image * 2.0 - 0.15, 0, 1) * rng.uniform(0.85, 1.0, (n, 1, 1)).astype(np.float32)
    return np.rint(image * 255).astype(np.uint8)


def _bilinear(bank, glyph, rows, cols):
    """Sample ``bank[glyph[n]]`` at fractional (rows, cols); zero outside the ink.

    Coordinates are clamped to the canvas, whose 1-pixel rim is always blank
    (``_glyph_bank`` centres the glyphs with a wide margin), so outside is 0.
    """
    side = bank.shape[1]
    rows = np.clip(rows, 0, side - 1.001)
    cols = np.clip(cols, 0, side - 1.001)
    r0 = rows.astype(np.int32)
    c0 = cols.astype(np.int32)
    fr = rows - r0
    fc = cols - c0
    index = (glyph.astype(np.int64)[:, None, None] * side + r0) * side + c0
    flat = bank.reshape(-1)
    top = flat.take(index) * (1 - fc) + flat.take(index + 1) * fc
    bottom = flat.take(index + side) * (1 - fc) + flat.take(index + side + 1) * fc
    return top * (1 - fr) + bottom * fr
