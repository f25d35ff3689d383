"""``streets``: a procedural two-domain street-scene benchmark that runs on a laptop.

Real GTA5 / SYNTHIA / Cityscapes data cannot be shipped, yet every domain-adaptation method of the
library must be demonstrable in minutes on a CPU. This module draws driving scenes with per-pixel
labels in the canonical 19 Cityscapes trainIds and writes them in the *real* on-disk formats, so the
normal GTA5 and Cityscapes loaders read them unchanged:

* **source** (GTA5 format, the default): ``source/images/NNNNN.png`` (RGB) and ``source/labels/NNNNN.png``
  (palette PNG whose values are Cityscapes labelIds, unlabelled = 0); or (``source_format='synthia'``,
  SYNTHIA-RAND-CITYSCAPES format) ``source/RAND_CITYSCAPES/RGB/NNNNNNN.png`` and
  ``source/RAND_CITYSCAPES/GT/LABELS/NNNNNNN.png`` (16-bit 3-channel PNG, SYNTHIA class id in R,
  instance id in G);
* **target** (Cityscapes format): ``target/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png``
  and ``target/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png`` (8-bit labelIds) with
  ``<stem>_gtFine_instanceIds.png`` (16-bit, ``labelId * 1000 + k`` on the pixels of an instance).

Instances (generator version 3, :mod:`~balda.data.streets.instances`): every drawn object is one
object, and each of its visible thing classes one instance (a bicycle and its rider are two); the
images and labels are those of version 2, byte for byte.

Each domain has its own size (``source_size``, ``target_size``; default 128x256 for both), so the
real shapes (GTA5 1052x1914, SYNTHIA 760x1280, Cityscapes 1024x2048; about a second per image on a
CPU core) exercise the real-data recipes, and ``quirks=True`` adds the irregular sizes of the real
GTA5 download (:func:`generate_streets`).

What a scene contains and why
-----------------------------
A pin-hole camera looks down a straight street (horizon row, vanishing point, ground plane), so the
layout has the statistics of a driving scene: a road trapezoid with lane markings, kerbs and
sidewalks, optional grass verges (terrain), two facade planes of buildings with perspective-correct
windows, vegetation blocks and street trees, low walls and fences in front of some blocks, a distant
skyline and sky, poles with traffic signs and traffic lights, parked and moving cars, trucks, buses, a
tram on rails, pedestrians, riders on bicycles / motorcycles (rider = class 12 on a vehicle of class
17/18), parked bicycles, plus a few "static" objects (bins, bollards) and, in the target, the ego
vehicle's bonnet that are *unlabelled* (255 / labelId 0) as in the real data. Objects are 3-D boxes
or sprites on vertical planes, projected exactly and painted far-to-near, so nearby objects are big
and occlude, and far ones are tiny. The 'cityscapes' class priors give long-tailed frequencies close
to Cityscapes train (road ~37 %, building ~23 %, vegetation ~16 %, car ~7 %, rare classes 0.1-0.9 %);
truck, bus and train appear in a minority of images.

Within-class variety
--------------------
A class's colours change from image to image (materials, paint, clothes): every image tints and
scales each class's palette and rescales its textures (:func:`~balda.data.streets.style.vary_style`,
the same amount in both domains), so colour alone does not identify a class within a domain and a
network has to use shape and context (``benchmarks/colour_classifier.py`` measures what a
per-pixel colour lookup reaches).

The domain gap (generator version 2)
------------------------------------
The default profiles (``cityscapes``, ``balanced``) have the *nuisance* gap of synthetic-to-real
data, which unsupervised adaptation can bridge:

* sensor and tone: a saturated, contrasty, sharp, noise-free source against a desaturated,
  colour-cast, blurred, noisy, vignetted target;
* illumination: a low sun in the source (lit left facades, shaded right facades, a cast shadow over
  the right sidewalk and road) against overcast light in the target;
* camera (focal length, height, horizon), textures (tiled vs plain sidewalk, fine vs blotchy
  foliage, siding vs smooth facades), object proportions (boxier cars, slimmer people) and, half-way,
  materials (the palettes of stuff classes, clothing, car paint);
* label shift: the source has more cars and trucks, the target more pedestrians and bicycles.

The ``hard`` profile adds what version 1 had by default: palettes that make a class look like
another one of the other domain (traffic-light housings from yellow to dark grey, sign colours,
source trucks coloured like target buses, new colours for trams, two-wheelers and riders), a
shift no unsupervised method can bridge from appearance alone.

``shift`` in [0, 1] linearly interpolates every source parameter (appearance *and* priors) from the
target's (0: identical distributions) to the full source style (1); values > 1 extrapolate. The
benchmark uses :data:`DEFAULT_SHIFT` (0.65), chosen from source-only and oracle runs alone.

Entry points: :func:`render_scene` (one image), :func:`generate_streets` (the folder, with
``meta.json`` and sample pages) and :func:`streets_exists` (is a folder complete for these params).
Every image gets its own seed derived from ``(seed, domain, index)``, so the output is byte-identical
whatever the number of worker processes.
"""

from __future__ import annotations

from .render import image_rng, render_scene
from .style import DEFAULT_SHIFT, PROFILES, domain_priors, domain_style
from .writer import (
    GENERATOR,
    GENERATOR_VERSION,
    SOURCE_FORMATS,
    TARGET_CITIES,
    generate_streets,
    load_streets_meta,
    streets_exists,
)

__all__ = [
    "generate_streets",
    "streets_exists",
    "render_scene",
    "image_rng",
    "domain_style",
    "domain_priors",
    "PROFILES",
    "DEFAULT_SHIFT",
    "TARGET_CITIES",
    "GENERATOR",
    "GENERATOR_VERSION",
    "load_streets_meta",
    "SOURCE_FORMATS",
]
