"""MER metrics as the field reports them: UF1, UAR, accuracy from one pooled confusion matrix.

LOSO papers pool the predictions of every left-out subject into one confusion matrix and
compute the metrics once (computing per fold and averaging gives different, higher-variance
numbers). AU metrics score the AUs parsed from generated explanations against the labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str | None], classes: Sequence[str]) -> np.ndarray:
    """Rows: true class, columns: predicted class. A prediction outside ``classes`` (e.g. an
    unparseable answer, ``None``) counts as wrong for its true class and as no class's FP."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({t for t in y_true if t not in index})
    if unknown:
        raise ValueError(f"true labels {unknown} are not among the classes {list(classes)}")
    matrix = np.zeros((len(classes), len(classes) + 1), dtype=np.int64)  # last column: invalid
    for t, p in zip(y_true, y_pred):
        matrix[index[t], index.get(p, len(classes))] += 1
    return matrix


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str | None],
                           classes: Sequence[str]) -> dict:
    """UF1 = mean_c 2TP/(2TP+FP+FN); UAR = mean_c TP/N_c; accuracy. Classes with no true
    sample are left out of the means (their recall is undefined) and listed as ``absent``."""
    full = confusion_matrix(y_true, y_pred, classes)
    matrix = full[:, : len(classes)]
    tp = np.diag(matrix).astype(float)
    support = full.sum(1).astype(float)           # includes invalid predictions
    fp = matrix.sum(0) - tp
    fn = support - tp
    present = support > 0
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    total = support.sum()
    return {
        "uf1": float(f1[present].mean()) if present.any() else 0.0,
        "uar": float(recall[present].mean()) if present.any() else 0.0,
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "n": int(total),
        "invalid_predictions": int(full[:, -1].sum()),
        "classes": list(classes),
        "absent": [c for c, p in zip(classes, present) if not p],
        "per_class": {c: {"f1": float(f), "recall": float(r), "support": int(s)}
                      for c, f, r, s in zip(classes, f1, recall, support)},
        "confusion": matrix.tolist(),
    }


def paired_uf1_difference(y_true: Sequence[str], pred_a: Sequence[str | None], pred_b: Sequence[str | None],
                          classes: Sequence[str], resamples: int = 1000, seed: int = 0,
                          groups: Sequence | None = None) -> dict:
    """UF1(a) - UF1(b) on the same clips, with a 95 % paired bootstrap interval (clips resampled).

    One seed's LOSO run gives one number per model; whether two models differ is the question
    an ablation asks, and an interval that includes 0 says this data cannot tell them apart.
    ``groups``: rows that share a group are drawn together (a cluster bootstrap). Pooling
    several training seeds gives one row per clip and seed; grouping by clip keeps the interval
    about new clips, not about more rows of the same ones.
    """
    if not len(y_true) == len(pred_a) == len(pred_b):
        raise ValueError(f"{len(y_true)} labels but {len(pred_a)} and {len(pred_b)} predictions")
    if groups is None:
        groups = range(len(y_true))
    elif len(groups) != len(y_true):
        raise ValueError(f"{len(y_true)} labels but {len(groups)} groups")
    members: dict = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    members = list(members.values())
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = [i for g in rng.integers(0, len(members), len(members)) for i in members[g]]
        truth = [y_true[i] for i in idx]
        diffs.append(classification_metrics(truth, [pred_a[i] for i in idx], classes)["uf1"]
                     - classification_metrics(truth, [pred_b[i] for i in idx], classes)["uf1"])
    low, high = np.percentile(diffs, [2.5, 97.5])
    diff = classification_metrics(y_true, pred_a, classes)["uf1"] - classification_metrics(y_true, pred_b, classes)["uf1"]
    return {"difference": float(diff), "low": float(low), "high": float(high), "resamples": resamples}


def au_metrics(true_aus: Sequence[Sequence[str]], pred_aus: Sequence[Sequence[str]]) -> dict:
    """Micro precision / recall / F1 of predicted AU sets against labelled AU sets, plus per AU."""
    if len(true_aus) != len(pred_aus):
        raise ValueError(f"{len(true_aus)} AU label sets but {len(pred_aus)} predicted sets")
    counts: dict[str, list[int]] = {}  # au -> [tp, fp, fn]
    for truth, pred in zip(true_aus, pred_aus):
        truth, pred = set(truth), set(pred)
        for au in truth | pred:
            c = counts.setdefault(au, [0, 0, 0])
            c[0] += au in truth and au in pred
            c[1] += au in pred and au not in truth
            c[2] += au in truth and au not in pred
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))

    def prf(tp, fp, fn):
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}

    return {**prf(tp, fp, fn), "per_au": {au: prf(*c) for au, c in sorted(counts.items())}}


def plot_confusion(matrix, classes: Sequence[str], path, title: str = "") -> None:
    """Save a confusion-matrix PNG (rows true, columns predicted), counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(classes), 1.0 + 0.8 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def loso_folds(subjects: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Leave-one-subject-out: ``(test_subject, train_subjects)`` for each distinct subject."""
    distinct = sorted(set(subjects))
    if len(distinct) < 2:
        raise ValueError(f"LOSO needs at least 2 subjects, got {distinct}")
    return [(s, [t for t in distinct if t != s]) for s in distinct]
