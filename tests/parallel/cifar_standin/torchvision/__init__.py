"""A stand-in for torchvision in the CIFAR example tests: only what DeepSpeedExamples' cifar10_deepspeed.py
uses (``datasets.CIFAR10`` and ``transforms.Compose/ToTensor/Normalize``), with synthetic data of CIFAR-10's
shapes (32x32x3 uint8 images, 10 classes), because CIFAR-10 cannot be downloaded here and the real
torchvision's C extension does not load with the CPU torch build. The test puts this directory first on
PYTHONPATH; the example script itself is not changed."""

from torchvision import datasets, transforms

__all__ = ["datasets", "transforms"]
