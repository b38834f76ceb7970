"""Data and training for the small classifier of :mod:`sparsekit.torch.layers` (nothing is downloaded).

:func:`synthetic_images` draws CIFAR-10-shaped images whose class shows in their structure;
:func:`train_steps` trains any model on them with Adam, seeded, so a classifier trains in seconds on a
CPU and gives the same losses on every run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_int

__all__ = ["synthetic_images", "train_steps"]


def synthetic_images(
    num_samples: int, num_classes: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10-shaped synthetic images whose class shows in their structure; nothing is downloaded.

    Class ``c`` is a sinusoidal grating at orientation ``pi * c / num_classes`` with a class frequency,
    drawn in a class colour, at a random phase and under Gaussian noise (standard deviation 0.5), so
    both colour statistics and spatial structure (orientation, frequency) identify the class. Labels
    cycle through the classes and are then shuffled.

    Returns
    -------
    images : torch.Tensor
        ``float32 (num_samples, 3, 32, 32)``, roughly zero mean and unit scale.
    labels : torch.Tensor
        ``int64 (num_samples,)`` in ``[0, num_classes - 1]``.
    """
    num_samples = check_int("num_samples", num_samples, low=1)
    num_classes = check_int("num_classes", num_classes, low=2)
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=gen)]
    # Class colours come from their own generator: the same classes look the same for every seed.
    colours = torch.rand(num_classes, 3, generator=torch.Generator().manual_seed(1234)) * 2 - 1
    angle = math.pi * labels.double() / num_classes
    frequency = 2 * math.pi * (2 + (labels.double() % 3)) / 32
    phase = torch.rand(num_samples, generator=gen, dtype=torch.float64) * 2 * math.pi
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    along = torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy
    grating = torch.sin(frequency[:, None, None] * along + phase[:, None, None])  # (N, 32, 32)
    images = colours[labels][:, :, None, None].double() * (0.5 + 0.5 * grating[:, None])
    images = images + 0.5 * torch.randn(num_samples, 3, 32, 32, generator=gen, dtype=torch.float64)
    return images.float(), labels


def train_steps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float = 3e-3,
    seed: int = 0,
    batch_size: int = 32,
) -> list[float]:
    """Train ``model`` with Adam on random mini-batches; returns the loss of every step.

    The batches are drawn from a generator seeded with ``seed``, so with a seeded model the losses are
    the same on every run (on the same machine and thread count).
    """
    steps = check_int("steps", steps, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    seed = check_int("seed", seed, low=0)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images and labels must have the same length, got {images.shape[0]} and {labels.shape[0]}"
        )
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
