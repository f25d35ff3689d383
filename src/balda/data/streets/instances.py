"""Instance ids of the street benchmark (generator version 3).

While a scene is painted, :class:`~balda.data.streets.geometry._Canvas` can keep, next to the label
map, an *object map*: the number (1, 2, ...) of the object whose ``draw`` last painted each pixel (0
for the background). One object may paint several thing classes (a rider and the bicycle under
it), so an instance is one ``(object, thing class)`` pair of the final maps. Whatever is painted
later wins: a pixel overwritten by a stuff class, an unlabelled object or the ego-vehicle's bonnet
(which writes the label directly) is no longer a thing pixel and gets instance 0.

The thing classes are those of the 19-class space (person, rider, car, truck, bus, train,
motorcycle, bicycle), the same list as :data:`balda.data.panoptic.THING_TRAINIDS`; they are spelt
here so that the generator does not import torch.
"""

from __future__ import annotations

import numpy as np

from balda.data.labels import TRAINID_TO_LABELID_LUT

from .style import BIKE, BUS, CAR, MOTO, PERSON, RIDER, TRAIN, TRUCK

#: Thing trainIds painted by the generator (equal to ``balda.data.panoptic.THING_TRAINIDS``).
THINGS: tuple[int, ...] = tuple(sorted((PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTO, BIKE)))
_THING_LUT = np.zeros(256, bool)
_THING_LUT[list(THINGS)] = True


def instance_map(objects: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Instance ids (int32 (H, W)) from an object map and a trainId label map of the same shape.

    A pixel belongs to an instance when its class is a thing (:data:`THINGS`) and its object number
    is positive; the distinct ``(object, class)`` pairs of such pixels are numbered ``1..N`` in
    increasing ``(object, class)`` order (drawing order, then class). Every other pixel is 0.
    """
    objects = np.asarray(objects)
    label = np.asarray(label)
    if objects.shape != label.shape:
        raise ValueError(f"object map {objects.shape} and label {label.shape} differ in shape")
    out = np.zeros(label.shape, np.int32)
    fg = _THING_LUT[label] & (objects > 0)
    if fg.any():
        key = objects[fg].astype(np.int64) * 256 + label[fg]
        _, inv = np.unique(key, return_inverse=True)
        out[fg] = inv.reshape(-1) + 1
    return out


def cityscapes_instance_ids(label: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """The values of a Cityscapes ``*_gtFine_instanceIds.png`` (uint16 (H, W)) of a scene.

    ``labelId * 1000 + k`` on the pixels of an instance, ``k = 0..n-1`` numbering the instances of
    each class in increasing instance-id order; elsewhere the labelId of the pixel (the value of the
    ``labelIds`` file: unlabelled pixels are 0). ``label`` holds trainIds (255 = unlabelled),
    ``instances`` the ids of :func:`instance_map`.
    """
    label = np.asarray(label)
    instances = np.asarray(instances)
    if label.shape != instances.shape:
        raise ValueError(f"label {label.shape} and instance map {instances.shape} differ in shape")
    label_ids = TRAINID_TO_LABELID_LUT[label].astype(np.int64)
    out = label_ids.copy()
    fg = instances > 0
    if fg.any():
        ids, inv = np.unique(instances[fg], return_inverse=True)
        inv = inv.reshape(-1)
        # the class of each instance (one class per instance by construction)
        cls = np.zeros(len(ids), np.int64)
        cls[inv] = label_ids[fg]
        k = np.zeros(len(ids), np.int64)
        for c in np.unique(cls):
            sel = np.flatnonzero(cls == c)  # ids are sorted, so k follows the instance-id order
            k[sel] = np.arange(len(sel))
        if k.max() >= 1000:
            raise ValueError(f"a class has {int(k.max()) + 1} instances; at most 1000 fit the Cityscapes encoding")
        out[fg] = (cls * 1000 + k)[inv]
    return out.astype(np.uint16)


__all__ = ["THINGS", "instance_map", "cityscapes_instance_ids"]
