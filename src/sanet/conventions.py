"""The conventions every floor shares: the ignore label and the input normalisation.

One definition each, imported by the data, losses, metrics, inference and export code (floor 0:
no sanet imports), so that a change here is a change everywhere and the tests can pin it against
the published values.
"""

from __future__ import annotations

#: Mask value of pixels that are not labelled (VOC's object borders, padding, classes a dataset
#: leaves out): never counted by the losses (Sec. 3) or the metrics (SPEC §2.5).
IGNORE_INDEX = 255

#: ImageNet statistics of RGB in 0..1, the normalisation of timm's and torchvision's
#: ImageNet-pretrained ResNets: ``x = (pixel / 255 - mean) / std``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
