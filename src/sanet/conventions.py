"""The conventions every floor shares: the ignore label and the input normalisation.

One definition each, imported by the data, losses, metrics, inference and export code (floor 0:
no sanet imports), so that a change here is a change everywhere and the tests can pin it against
the published values.
"""

from __future__ import annotations

#: Mask value of pixels that are not labelled (VOC's object borders, padding, classes a dataset
#: leaves out): never counted by the losses (Sec. 3) or the metrics (docs/design.md).
IGNORE_INDEX = 255

#: ImageNet statistics of RGB in 0..1, the normalisation of timm's and torchvision's
#: ImageNet-pretrained ResNets: ``x = (pixel / 255 - mean) / std``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The paper's evaluation protocol (Sec. 4; PyTorch-Encoding's ``MultiEvalModule``): scales of
#: the base size, each image's long side at scale 1.0, and the sliding window over larger inputs.
PAPER_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
BASE_SIZE = 520
EVAL_CROP_SIZE = 480
EVAL_STRIDE = 320  # 2/3 of the window

#: ``amp`` values of training and the inference verbs: ``auto`` picks per machine
#: (:func:`sanet.devices.choose_precision`), the others are taken as given (``none`` = float32).
#: Here, not in ``devices``, so that the CLI lists them without importing torch.
AMP_CHOICES = ("auto", "none", "bf16", "fp16")
