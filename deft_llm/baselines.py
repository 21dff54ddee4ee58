"""A flow-only baseline for the LOSO tables: STSTNet (Liong et al., 2019), our compact re-creation.

It sees only the optical-flow input the classic MER pipelines use, (u, v, strain) of the onset
-> apex flow resized to 28 x 28, taken from the same DEFT processor (so both models get the
same flow), and is trained on the same LOSO folds. It answers: how much do the three experts
and the language model add over the motion map alone?
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import loso_folds


class STSTNet(nn.Module):
    """Shallow triple-stream net: 3x3 convs with 3, 5 and 8 filters side by side, max-pooled,
    concatenated, average-pooled and read by one linear layer (about 4k parameters for 9 classes)."""

    def __init__(self, num_classes: int, in_channels: int = 3, size: int = 28):
        super().__init__()
        self.size = size
        self.streams = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(width),
                          nn.MaxPool2d(3, stride=3, padding=1))
            for width in (3, 5, 8))
        self.pool = nn.AvgPool2d(2, stride=2)
        side = (size + 2 - 3) // 3 + 1  # after the max pool
        self.classifier = nn.Linear(16 * (side // 2) ** 2, num_classes)

    def forward(self, motion_map: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(motion_map, size=(self.size, self.size), mode="area")
        x = torch.cat([stream(x) for stream in self.streams], dim=1)
        return self.classifier(self.pool(x).flatten(1))


def train_ststnet(maps: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int = 200,
                  lr: float = 5e-3, batch_size: int = 64, seed: int = 0) -> STSTNet:
    """Plain Adam on cross-entropy for a fixed number of epochs (no model selection)."""
    torch.manual_seed(seed)
    model = STSTNet(num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(maps), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def ststnet_loso(rows, clip_tensors, classes: list[str], folds: int | None = None,
                 epochs: int = 200, seed: int = 0) -> tuple[list[dict], dict]:
    """LOSO predictions of STSTNet on ``rows`` (``clip_tensors(row)["motion_map"]`` as input)."""
    maps = np.stack([clip_tensors(row)["motion_map"] for row in rows]).astype(np.float32)
    labels = np.array([classes.index(row["emotion"]) for row in rows])
    subjects = np.array([row["subject"] for row in rows])
    predictions, timings = [], {}
    for test_subject, _ in loso_folds(list(subjects))[:folds]:
        start = time.perf_counter()
        train = subjects != test_subject
        model = train_ststnet(maps[train], labels[train], len(classes), epochs=epochs, seed=seed)
        with torch.no_grad():
            predicted = model(torch.from_numpy(maps[~train])).argmax(-1).tolist()
        for i, p in zip(np.flatnonzero(~train), predicted):
            predictions.append({"id": rows[int(i)]["id"], "subject": test_subject,
                                "emotion": rows[int(i)]["emotion"], "head_emotion": classes[p]})
        timings[test_subject] = round(time.perf_counter() - start, 1)
    return predictions, timings
