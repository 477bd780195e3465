"""An analytic object detector for mini-world images: the mini profile's stand-in for GenEval's Mask2Former.

Objects of the mini world are flat fills of a palette colour (mini_world.COLOURS) on low-saturation
backgrounds at least SAFE_DISTANCE (80 RGB) from every palette colour. Generated images are VQ-decoded:
edges are soft, corners and one-pixel tips get rounded off, colours drift. The detector therefore

1. marks a pixel as object when it is nearer its nearest palette colour than the background (the median
   of the pixels far from every palette colour), and nearer than SAFE_DISTANCE: a blurred edge belongs to
   an object once past the midpoint, whatever the contrast;
2. takes 4-connected components, drops specks (MIN_AREA_FRACTION of the image) and fills holes;
3. splits a component only when several palette colours hold bulk in it (touching objects of different
   colours), and otherwise names it by the colour most of its pixels are nearest to;
4. scores each shape by the IoU of the component's mask with that shape's template: the ideal shape
   stretched to the component's box, or a softened one (blurred, cut at the midpoint, a little larger
   than the box, up to a pixel off centre) that models the decoder's rounding. The best shape is the
   class; its IoU, lowered for boxes far from square, is the confidence (1.0 on clean renders).

The colour is exact here: real GenEval classifies the masked crop with CLIP zero-shot, which can err;
a palette lookup cannot, so colour clauses test the generator alone.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from arrag.data.mini_world import COLOURS, SAFE_DISTANCE, SHAPES, shape_template
from arrag.evaluation.geneval import Detection

COLOUR_THRESHOLD = SAFE_DISTANCE  # RGB distance from every palette colour at which a pixel is background for sure
BACKGROUND_DISTANCE = SAFE_DISTANCE / 2  # pixels this far from every palette colour estimate the background
MIN_AREA_FRACTION = 12 / 32**2  # components smaller than this share of the image are noise (smallest shape: ~32 px)
MIN_COLOUR_SHARE = 0.25  # a second colour must hold this share of a component (and the min area) to split it off
SQUARE_TOLERANCE = 0.8  # boxes with a min/max side ratio below this lose confidence
SOFTENING = (0.0, 0.5, 0.8, 1.1)  # blur sigmas (px) of the softened templates (0: the sharp template)
GROWTH = (0, 1, 2)  # softened templates' sides beyond the component's box (blurred-away tips and corners)
SLACK = 1  # softened templates are tried up to this many px off the box centre (lopsided blur, stray pixels)
TEMPLATE_MARGIN = 2  # empty pixels around a softened template, room for the blur
_SUPERSAMPLE = 4  # softened templates start from pixel coverage measured on a 4x finer grid

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _PALETTE_NAMES], dtype=np.float32)  # [C, 3]


def nearest_palette(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] -> (index of the nearest palette colour [H, W], its RGB distance [H, W])."""
    dist = np.linalg.norm(image[:, :, None, :].astype(np.float32) - _PALETTE, axis=-1)  # [H, W, C]
    nearest = dist.argmin(-1)
    return nearest, np.take_along_axis(dist, nearest[..., None], -1)[..., 0]


def background_colour(image: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Median RGB of the pixels far from every palette colour (the image median if there are none)."""
    far = dist >= BACKGROUND_DISTANCE
    return np.median(image[far] if far.any() else image.reshape(-1, 3), axis=0)


def object_pixels(image: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Pixels nearer their palette colour than the background: a blurred edge belongs to the object once it
    is past the midpoint, whatever the contrast (a fixed distance would shrink high-contrast shapes)."""
    to_background = np.linalg.norm(image.astype(np.float32) - background_colour(image, dist), axis=-1)
    return (dist < to_background) & (dist < COLOUR_THRESHOLD)


def colour_regions(nearest: np.ndarray, component: np.ndarray, min_area: int) -> list[tuple[int, np.ndarray]]:
    """Split one component into (palette index, mask) regions: by colour if several colours hold bulk
    (touching objects; stray colours, such as blends along the seam, are dropped), else the whole component
    under its majority colour (colour drift inside one object)."""
    counts = np.bincount(nearest[component], minlength=len(_PALETTE))
    bulk = [c for c in np.flatnonzero(counts) if counts[c] >= max(min_area, MIN_COLOUR_SHARE * counts.sum())]
    if len(bulk) <= 1:
        return [(int(counts.argmax()), component)]
    regions = []
    for c in bulk:
        labels, n = ndimage.label(component & (nearest == c))
        regions.extend((int(c), labels == i) for i in range(1, n + 1))
    return regions


@cache
def softened_templates(side: int) -> np.ndarray:
    """float32 [shapes, blurs, side + 2 * TEMPLATE_MARGIN, same]: what an ideal shape of this side segments to
    after a Gaussian blur of each SOFTENING sigma, cut at the midpoint. Corners round off and one-pixel tips
    drop below the cut, as in a VQ decoder's output, so such a component still matches its own shape best."""
    out = []
    for shape in SHAPES:
        fine = shape_template(shape, side * _SUPERSAMPLE, side * _SUPERSAMPLE)
        coverage = np.pad(fine.reshape(side, _SUPERSAMPLE, side, _SUPERSAMPLE).mean((1, 3)), TEMPLATE_MARGIN)
        sharp = np.pad(shape_template(shape, side, side), TEMPLATE_MARGIN)
        out.append([ndimage.gaussian_filter(coverage, s, mode="constant") > 0.5 if s else sharp for s in SOFTENING])
    templates = np.array(out, dtype=np.float32)
    templates.setflags(write=False)  # cached: nobody may edit it
    return templates


def shape_ious(mask: np.ndarray) -> dict[str, float]:
    """Tight boolean mask -> per shape, the best IoU with its box-filling template or with a softened template
    (blur in SOFTENING, side up to max(GROWTH) px beyond the box) centred on the box to within a pixel."""
    h, w = mask.shape
    ious = {}
    for shape in SHAPES:
        t = shape_template(shape, h, w)
        ious[shape] = float((mask & t).sum() / (mask | t).sum())
    area = mask.sum()
    for side in (max(h, w) + g for g in GROWTH):
        span = side + 2 * TEMPLATE_MARGIN
        # pad so that every placement up to SLACK px off centre is a window: window index i <-> shift i - SLACK
        pad_y, pad_x = (span - h) // 2 + SLACK, (span - w) // 2 + SLACK
        extra_y, extra_x = span - h - pad_y + 2 * SLACK, span - w - pad_x + 2 * SLACK
        canvas = np.pad(mask, ((pad_y, extra_y), (pad_x, extra_x))).astype(np.float32)
        windows = sliding_window_view(canvas, (span, span))  # [2 SLACK + 1, 2 SLACK + 1, span, span]
        templates = softened_templates(side)  # [shapes, blurs, span, span]
        inter = np.einsum("yxij,sbij->sbyx", windows, templates)
        union = area + templates.sum((-2, -1))[..., None, None] - inter
        for shape, best in zip(SHAPES, (inter / union).max((1, 2, 3))):
            ious[shape] = max(ious[shape], float(best))
    return ious


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """Tight boolean mask of one object -> (best-fitting shape, confidence in [0, 1]): the best IoU, times
    the squared shortfall of the box's side ratio below SQUARE_TOLERANCE (every mini-world shape has a
    square box; a stretched template would otherwise fit a bar as a perfect square)."""
    ious = shape_ious(mask)
    best = max(ious, key=ious.get)
    h, w = mask.shape
    return best, ious[best] * min(1.0, min(h, w) / max(h, w) / SQUARE_TOLERANCE) ** 2


def detect_shapes(image: np.ndarray) -> list[Detection]:
    """uint8 [S, S, 3] image -> one Detection per coloured shape, highest score first."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    min_area = max(1, round(MIN_AREA_FRACTION * image.shape[0] * image.shape[1]))
    nearest, dist = nearest_palette(image)
    labels, n = ndimage.label(object_pixels(image, dist))
    detections = []
    for i, where in enumerate(ndimage.find_objects(labels), 1):
        component = labels == i
        if component[where].sum() < min_area:
            continue
        for colour, region in colour_regions(nearest, component, min_area):
            if region.sum() < min_area:
                continue
            ys, xs = np.nonzero(region)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            region[y0:y1, x0:x1] = ndimage.binary_fill_holes(region[y0:y1, x0:x1])
            shape, score = classify_shape(region[y0:y1, x0:x1])
            box = (float(x0), float(y0), float(x1), float(y1))
            detections.append(Detection(shape, score, box, region, _PALETTE_NAMES[colour]))
    return sorted(detections, key=lambda d: -d.score)
