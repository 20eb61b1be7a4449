"""A small synthetic street city in the exact Cityscapes layout.

The toy city lets the whole pipeline (dataset checks, training, evaluation)
run in minutes on a CPU without the 11 GB Cityscapes download. Each frame is
a perspective street drawn with OpenCV primitives: a road running to a
vanishing point, sidewalks and grass beside it, buildings with windows,
trees, poles with signs and lights, cars and people scaled by depth, and
sometimes the ego vehicle's bonnet (a void label, trainId 255, as in the real
data). Colours are textured and jittered per object and per image, so colour
alone is not a perfect cue while a small CNN still learns a lot.

Frames are drawn in Cityscapes labelIds; trainIds follow from the official
labelId -> trainId table, so both label files always agree. Every frame has
its own generator seeded by ``(seed, split, index)``: the same seed gives the
same bytes, and a frame does not depend on how many others are drawn.
"""
from pathlib import Path

import cv2
import numpy as np
from mmengine.logging import print_log
from tqdm import tqdm

from ..errors import InvalidArgumentError
from ..fileio import check_output_location, claim_outputs
from . import cityscapes_layout as layout

CITY = 'toycity'
#: Cityscapes instanceIds: ``labelId * INSTANCE_OFFSET + instance number``.
INSTANCE_OFFSET = 1000

# Per label name: base RGB colour, per-object colour spread, fine (per pixel)
# and coarse (blotchy) noise amplitudes.
APPEARANCE = {
    'sky': ((115, 160, 210), 18, 2, 5),
    'building': ((125, 110, 95), 40, 5, 12),
    'vegetation': ((65, 105, 45), 14, 16, 20),
    'terrain': ((125, 150, 85), 14, 10, 12),
    'road': ((90, 88, 94), 10, 7, 9),
    'sidewalk': ((160, 148, 150), 12, 7, 9),
    'pole': ((115, 118, 122), 25, 4, 4),
    'traffic sign': ((40, 90, 190), 10, 4, 3),
    'traffic light': ((35, 35, 30), 8, 4, 3),
    'car': ((150, 150, 150), 10, 5, 6),
    'person': ((80, 70, 75), 10, 8, 6),
    'ego vehicle': ((35, 35, 40), 8, 3, 4),
}
CAR_PAINTS = ((200, 200, 205), (30, 30, 35), (150, 30, 30), (40, 60, 140),
              (120, 125, 130), (210, 190, 60), (60, 90, 60), (170, 170, 175))
SIGN_PAINTS = ((40, 90, 190), (200, 40, 40), (235, 235, 235), (230, 200, 40))
CLOTHES = ((40, 40, 60), (120, 30, 30), (70, 70, 70), (30, 60, 100),
           (180, 160, 120), (90, 50, 90), (20, 20, 20))


class _Canvas:
    """An RGB image, its labelId map and its Cityscapes instanceId map, painted together.

    Instance ids follow Cityscapes: pixels of a class with instances (car, person, ...)
    inside an object begun with :meth:`begin_object` get ``labelId * 1000 + k`` (k counts
    that class's objects in the frame from 0); every other pixel gets its labelId.
    """

    def __init__(self, rng, height, width):
        self.rng = rng
        self.height, self.width = height, width
        self.rgb = np.zeros((height, width, 3), np.uint8)
        self.ids = np.zeros((height, width), np.uint8)
        self.instance_ids = np.zeros((height, width), np.uint16)
        self._instance_counts = {}
        self._object = None  # label name -> instance number, within the current object

    def begin_object(self):
        """Start a new object: its car / person pixels form new instances."""
        self._object = {}

    def _instance_value(self, name):
        label = layout.label(name)
        if not label.has_instances or self._object is None:
            return label.id
        if name not in self._object:
            self._object[name] = self._instance_counts.get(name, 0)
            self._instance_counts[name] = self._object[name] + 1
        return label.id * INSTANCE_OFFSET + self._object[name]

    def colour(self, name, base=None):
        ref, spread = APPEARANCE[name][:2]
        base = ref if base is None else base
        rgb = np.asarray(base, float) + self.rng.normal(0, spread, 3)
        return tuple(int(c) for c in np.clip(rgb, 0, 255))

    def poly(self, name, points, colour=None, label=True):
        """Fill a polygon; ``label=False`` paints texture only."""
        points = [np.round(np.asarray(points)).astype(np.int32)]
        cv2.fillPoly(self.rgb, points, colour or self.colour(name))
        if label:
            cv2.fillPoly(self.ids, points, layout.label_id(name))
            cv2.fillPoly(self.instance_ids, points, self._instance_value(name))

    def rect(self, name, x0, y0, x1, y1, colour=None, label=True):
        self.poly(name, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour,
                  label)

    def circle(self, name, x, y, radius, colour=None, label=True):
        centre, radius = (int(round(x)), int(round(y))), max(1, round(radius))
        cv2.circle(self.rgb, centre, radius, colour or self.colour(name), -1)
        if label:
            cv2.circle(self.ids, centre, radius, layout.label_id(name), -1)
            cv2.circle(self.instance_ids, centre, radius,
                       self._instance_value(name), -1)

    def ellipse(self, name, centre, axes, start, end):
        """A filled elliptic arc (as ``cv2.ellipse``), labelled ``name``."""
        cv2.ellipse(self.rgb, centre, axes, 0, start, end, self.colour(name), -1)
        cv2.ellipse(self.ids, centre, axes, 0, start, end, layout.label_id(name),
                    -1)
        cv2.ellipse(self.instance_ids, centre, axes, 0, start, end,
                    self._instance_value(name), -1)


class _Street:
    """Perspective geometry: straight lines from the vanishing point.

    A ground line is given by ``k``, its x offset at the image bottom in
    image widths; depth ``s`` runs from 0 at the horizon to 1 at the bottom.
    """

    def __init__(self, rng, height, width):
        self.height, self.width = height, width
        self.horizon = height * rng.uniform(0.36, 0.5)
        self.vx = width * rng.uniform(0.3, 0.7)
        self.centre = rng.uniform(-0.15, 0.15)
        self.half_road = rng.uniform(0.35, 0.65)
        self.walk = (rng.uniform(0.25, 0.6), rng.uniform(0.25, 0.6))
        self.grass = tuple(rng.uniform(0.2, 0.8) * (rng.random() < 0.5)
                           for _ in range(2))

    def y(self, s):
        return self.horizon + s * (self.height - self.horizon)

    def x(self, k, s):
        return self.vx + k * self.width * s

    def band(self, k0, k1):
        """The triangle between two ground lines, clipped by the image."""
        return [(self.vx, self.horizon), (self.x(k0, 1), self.height),
                (self.x(k1, 1), self.height)]

    def road_edges(self):
        return self.centre - self.half_road, self.centre + self.half_road

    def walk_k(self, rng, side):
        """A random ground line on the sidewalk of one side (0 left)."""
        left, right = self.road_edges()
        if side == 0:
            return left - rng.uniform(0.2, 0.9) * self.walk[0]
        return right + rng.uniform(0.2, 0.9) * self.walk[1]


def _draw_skyline(cv, street, rng):
    """Sky gradient, then building blocks and tree lines across the width."""
    h, w = cv.height, cv.width
    top, low = cv.colour('sky'), cv.colour('sky', (190, 205, 220))
    t = np.linspace(0, 1, h)[:, None, None] ** 0.7
    gradient = (1 - t) * np.asarray(top) + t * np.asarray(low)
    cv.rgb[:] = gradient.astype(np.uint8)
    cv.ids[:] = layout.label_id('sky')
    cv.instance_ids[:] = layout.label_id('sky')
    x = -rng.uniform(0, 0.1) * w
    far = max(street.vx, w - street.vx)
    while x < w:
        bw = w * rng.uniform(0.08, 0.25)
        near = abs(x + bw / 2 - street.vx) / far
        rise = street.horizon * rng.uniform(0.25, 1.0) * (0.3 + 0.8 * near)
        if rng.random() < 0.75:
            _draw_building(cv, rng, x, street.horizon - rise, bw)
        else:
            _draw_tree_line(cv, rng, x, street.horizon - 0.7 * rise, bw)
        x += bw


def _draw_building(cv, rng, x0, top, bw):
    h, w = cv.height, cv.width
    cv.rect('building', x0, top, x0 + bw, h)
    wall = np.asarray(cv.rgb[min(h - 1, max(0, int(top) + 1)),
                             min(w - 1, max(0, int(x0 + bw / 2)))], int)
    step_x = max(4.0, w * rng.uniform(0.02, 0.035))
    step_y = max(4.0, step_x * rng.uniform(0.9, 1.4))
    glass = np.clip(wall * rng.uniform(0.3, 0.6) + rng.normal(0, 8, 3), 0,
                    255)
    for wy in np.arange(top + step_y * 0.6, h, step_y):
        for wx in np.arange(x0 + step_x * 0.4, x0 + bw - step_x * 0.6,
                            step_x):
            lit = rng.random() < 0.1
            paint = (230, 210, 150) if lit else tuple(int(c) for c in glass)
            cv.rect('building', wx, wy, wx + step_x * 0.5, wy + step_y * 0.55,
                    paint, label=False)


def _draw_tree_line(cv, rng, x0, top, bw):
    h = cv.height
    cv.rect('vegetation', x0, top + bw * 0.2, x0 + bw, h)
    for cx in np.linspace(x0, x0 + bw, 4):
        cv.circle('vegetation', cx + rng.normal(0, bw * 0.05),
                  top + bw * 0.2 + rng.normal(0, bw * 0.05),
                  bw * rng.uniform(0.15, 0.3))


def _draw_ground(cv, street, rng):
    """Grass strips, sidewalks, then the road with curbs and lane marks."""
    left, right = street.road_edges()
    lw, rw = street.walk
    lg, rg = street.grass
    if lg:
        cv.poly('terrain', street.band(left - lw - lg, left - lw))
    if rg:
        cv.poly('terrain', street.band(right + rw, right + rw + rg))
    cv.poly('sidewalk', street.band(left - lw, left))
    cv.poly('sidewalk', street.band(right, right + rw))
    cv.poly('road', street.band(left, right))
    curb = cv.colour('sidewalk', (185, 180, 178))
    for k, inward in ((left, -0.02), (right, 0.02)):
        cv.poly('sidewalk', street.band(k, k + inward), curb, label=False)
    mark = (225, 225, 215)
    for s0 in np.arange(0.05 + rng.uniform(0, 0.15), 1.0, 0.2):
        s1 = s0 + 0.1
        x0, x1 = street.x(street.centre, s0), street.x(street.centre, s1)
        y0, y1 = street.y(s0), street.y(s1)
        half0, half1 = max(0.5, cv.width * 0.004 * s0), cv.width * 0.004 * s1
        cv.poly('road', [(x0 - half0, y0), (x0 + half0, y0),
                         (x1 + half1, y1), (x1 - half1, y1)], mark,
                label=False)


def _draw_tree(cv, x, y, size, rng):
    trunk = cv.colour('vegetation', (80, 60, 40))
    cv.rect('vegetation', x - size * 0.05, y - size * 0.7, x + size * 0.05, y,
            trunk)
    for _ in range(4):
        cv.circle('vegetation', x + rng.normal(0, size * 0.15),
                  y - size * rng.uniform(0.75, 1.05), size * rng.uniform(0.2,
                                                                         0.3))


def _draw_pole(cv, x, y, size, rng):
    half = max(0.5, size * 0.012)
    top = y - size * rng.uniform(0.8, 1.1)
    cv.rect('pole', x - half, top, x + half, y)
    roll = rng.random()
    if roll < 0.55:
        r = max(2.0, size * 0.06)
        paint = cv.colour('traffic sign',
                          SIGN_PAINTS[rng.integers(len(SIGN_PAINTS))])
        if rng.random() < 0.5:
            cv.circle('traffic sign', x, top + r, r, paint)
        else:
            cv.rect('traffic sign', x - r, top, x + r, top + 1.6 * r, paint)
    elif roll < 0.8:
        bw = max(2.0, size * 0.045)
        cv.rect('traffic light', x - bw, top, x + bw, top + 3 * bw)
        lamp = ((220, 40, 30), (240, 180, 30), (40, 200, 80))[rng.integers(3)]
        cv.circle('traffic light', x, top + bw * (0.8 + rng.integers(3)),
                  bw * 0.5, lamp, label=False)


def _draw_car(cv, x, y, size, rng):
    cw = size * rng.uniform(0.3, 0.38)
    ch = cw * rng.uniform(0.55, 0.7)
    body = cv.colour('car', CAR_PAINTS[rng.integers(len(CAR_PAINTS))])
    belt = y - ch * 0.55
    cv.rect('car', x - cw / 2, belt, x + cw / 2, y - ch * 0.08, body)
    cabin = [(x - cw * 0.4, belt), (x - cw * 0.3, y - ch),
             (x + cw * 0.3, y - ch), (x + cw * 0.4, belt)]
    cv.poly('car', cabin, body)
    glass = tuple(int(c * 0.35) + 15 for c in body)
    cv.poly('car', [(x - cw * 0.34, belt - ch * 0.03),
                    (x - cw * 0.27, y - ch * 0.92), (x + cw * 0.27,
                                                     y - ch * 0.92),
                    (x + cw * 0.34, belt - ch * 0.03)], glass, label=False)
    for side in (-1, 1):
        cv.circle('car', x + side * cw * 0.32, y - ch * 0.1, ch * 0.12,
                  (20, 20, 20))
        cv.rect('car', x + side * cw * 0.42 - cw * 0.05, belt + ch * 0.08,
                x + side * cw * 0.42 + cw * 0.05, belt + ch * 0.16,
                (230, 220, 180) if rng.random() < 0.5 else (170, 30, 30),
                label=False)


def _draw_person(cv, x, y, size, rng):
    ph = size * rng.uniform(0.3, 0.42)
    bw = max(1.5, ph * 0.14)
    coat = cv.colour('person', CLOTHES[rng.integers(len(CLOTHES))])
    trousers = cv.colour('person', CLOTHES[rng.integers(len(CLOTHES))])
    cv.rect('person', x - bw * 0.8, y - ph * 0.48, x - bw * 0.1, y, trousers)
    cv.rect('person', x + bw * 0.1, y - ph * 0.48, x + bw * 0.8, y, trousers)
    cv.poly('person', [(x - bw, y - ph * 0.45), (x - bw * 0.9, y - ph * 0.85),
                       (x + bw * 0.9, y - ph * 0.85), (x + bw, y - ph * 0.45)],
            coat)
    skin = cv.colour('person', (200, 160, 130))
    cv.circle('person', x, y - ph * 0.92, max(1.0, ph * 0.08), skin)


def _draw_objects(cv, street, rng):
    """Trees, poles, cars and people, painted far to near for occlusion."""
    size = cv.height
    left, right = street.road_edges()
    objects = []
    for _ in range(rng.integers(1, 4)):
        objects.append((_draw_tree, street.walk_k(rng, rng.integers(2)),
                        rng.uniform(0.1, 0.8)))
    for _ in range(rng.integers(3, 6)):
        objects.append((_draw_pole, street.walk_k(rng, rng.integers(2)),
                        rng.uniform(0.2, 1.0)))
    for _ in range(rng.integers(2, 7)):
        k = street.centre + rng.uniform(-0.75, 0.75) * street.half_road
        objects.append((_draw_car, k, rng.uniform(0.12, 0.95)))
    for _ in range(rng.integers(3, 8)):
        if rng.random() < 0.8:
            k = street.walk_k(rng, rng.integers(2))
        else:
            k = rng.uniform(left, right)
        objects.append((_draw_person, k, rng.uniform(0.25, 1.0)))
    for draw, k, s in sorted(objects, key=lambda obj: obj[2]):
        cv.begin_object()
        draw(cv, street.x(k, s), street.y(s), size * s * 1.6, rng)


def _texture(cv, rng):
    """Per-class grain and blotches, then a per-image colour jitter."""
    fine, coarse = np.zeros(256, np.float32), np.zeros(256, np.float32)
    for name, (_, _, fine_amp, coarse_amp) in APPEARANCE.items():
        fine[layout.label_id(name)] = fine_amp
        coarse[layout.label_id(name)] = coarse_amp
    h, w = cv.height, cv.width
    blotch = rng.normal(0, 1, (max(2, h // 8), max(2, w // 8), 3))
    blotch = cv2.resize(blotch.astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 1, (h, w, 3)).astype(np.float32)
    rgb = (cv.rgb.astype(np.float32) + fine[cv.ids][..., None] * grain +
           coarse[cv.ids][..., None] * blotch)
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3)
    rgb = (rgb - 128) * rng.uniform(0.8, 1.15) + 128
    rgb = rgb * gain.astype(np.float32) + rng.uniform(-20, 20)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def draw_scene(rng, height, width):
    """Draw one street frame.

    Args:
        rng (numpy.random.Generator): source of all randomness.
        height, width (int): frame size in pixels.

    Returns:
        tuple: ``(rgb, label_ids, instance_ids)``, an ``(H, W, 3)`` uint8 RGB
        image, an ``(H, W)`` uint8 map of Cityscapes labelIds and an ``(H, W)``
        uint16 map of Cityscapes instanceIds (see :class:`_Canvas`).
    """
    cv = _Canvas(rng, height, width)
    street = _Street(rng, height, width)
    _draw_skyline(cv, street, rng)
    _draw_ground(cv, street, rng)
    _draw_objects(cv, street, rng)
    if rng.random() < 0.4:
        bonnet = height * rng.uniform(0.04, 0.1)
        cv.ellipse('ego vehicle', (width // 2, int(height + bonnet)),
                   (int(width * 0.7), int(2 * bonnet)), 180, 360)
    return _texture(cv, rng), cv.ids, cv.instance_ids


def frame_name(split, index):
    """Cityscapes-style basename ``toycity_<seq>_<frame>``; the sequence
    number is the split's position in :data:`SPLITS`, so names are unique
    across splits."""
    return f'{CITY}_{layout.SPLITS.index(split):06d}_{index:06d}'


def toy_city_files(out_dir, num_train=48, num_val=12):
    """Every file :func:`make_toy_cityscapes` writes under ``out_dir``."""
    out_dir = Path(out_dir)
    files = []
    for split, num in (('train', num_train), ('val', num_val)):
        for index in range(num):
            name = frame_name(split, index)
            files.append(out_dir / layout.img_dir(split) / CITY / (name + layout.IMG_SUFFIX))
            files += [out_dir / layout.ann_dir(split) / CITY / (name + suffix)
                      for suffix in (layout.LABEL_ID_SUFFIX, layout.INSTANCE_ID_SUFFIX,
                                     layout.TRAIN_ID_SUFFIX)]
        files.append(out_dir / f'{split}.txt')
    return files


def make_toy_cityscapes(out_dir, num_train=48, num_val=12, size=(128, 256),
                        seed=0, force=False):
    """Write a toy city in the Cityscapes layout under ``out_dir``.

    Writes ``leftImg8bit/<split>/toycity/*_leftImg8bit.png``, the matching
    ``gtFine/<split>/toycity/*_gtFine_labelIds.png``,
    ``*_gtFine_instanceIds.png`` (16-bit, as Cityscapes' evaluation reads them)
    and ``*_gtFine_labelTrainIds.png``, and the split lists ``train.txt`` and
    ``val.txt`` (``toycity/<basename>`` per line).

    Args:
        out_dir (str | Path): data root to write into (created if needed).
        num_train, num_val (int): frames per split.
        size (tuple[int, int]): frame ``(height, width)``.
        seed (int): the same seed writes identical bytes.
        force (bool): replace the files of an earlier toy city in ``out_dir``
            (:func:`repseg.fileio.claim_outputs`); without it they are refused.

    Returns:
        dict: trainId pixel fraction per class name over the train split.
    """
    height, width = size
    if height < 32 or width < 32:
        raise InvalidArgumentError('toy city frames must be at least 32x32, got '
                                   f'{height}x{width}')
    out_dir = check_output_location(out_dir, is_folder=True, what='toy city root')
    claim_outputs(toy_city_files(out_dir, num_train, num_val), force, 'another folder')
    lut = layout.label_id_to_train_id_lut()
    counts = np.zeros(256, np.int64)
    for split, num in (('train', num_train), ('val', num_val)):
        img_dir = out_dir / layout.img_dir(split) / CITY
        ann_dir = out_dir / layout.ann_dir(split) / CITY
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        print_log(f'drawing {num} {split} frames of {height}x{width} into '
                  f'{img_dir.parent} and {ann_dir.parent}', logger='current')
        names = []
        for index in tqdm(range(num), desc=f'toy city {split}', unit='img'):
            rng = np.random.default_rng(
                [seed, layout.SPLITS.index(split), index])
            rgb, ids, instance_ids = draw_scene(rng, height, width)
            train_ids = lut[ids]
            name = frame_name(split, index)
            _write_png(img_dir / (name + layout.IMG_SUFFIX), rgb[..., ::-1])
            _write_png(ann_dir / (name + layout.LABEL_ID_SUFFIX), ids)
            _write_png(ann_dir / (name + layout.INSTANCE_ID_SUFFIX), instance_ids)
            _write_png(ann_dir / (name + layout.TRAIN_ID_SUFFIX), train_ids)
            if split == 'train':
                counts += np.bincount(train_ids.ravel(), minlength=256)
            names.append(f'{CITY}/{name}')
        split_file = out_dir / f'{split}.txt'
        split_file.write_text(''.join(n + '\n' for n in names))
        print_log(f'wrote {split_file}', logger='current')
    fractions = {
        name: float(counts[i] / max(1, counts.sum()))
        for i, name in enumerate(layout.CLASSES)
    }
    table = ', '.join(f'{n} {f:.1%}' for n, f in fractions.items() if f)
    print_log(f'train class pixel fractions: {table}', logger='current')
    return fractions


def _write_png(path, array):
    if not cv2.imwrite(str(path), np.ascontiguousarray(array)):
        raise OSError(f'could not write {path}')
