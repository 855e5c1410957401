"""GLUE metrics, computed offline with the official definitions.

`evaluate.load("glue", ...)` fetches a script from the hub, so we compute the same quantities with
scikit-learn and scipy, exactly as that script does: accuracy, binary F1 of the positive class
(MRPC, QQP), Matthews correlation (CoLA), Pearson and Spearman correlation (STS-B). Values are
fractions in [0, 1] (correlations in [-1, 1]); tables print them in percent.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean())


def f1(pred: np.ndarray, gold: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred))


def matthews_correlation(pred: np.ndarray, gold: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(gold, pred))


def pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(pred, gold)[0]) if np.std(pred) > 0 else 0.0  # constant output: no correlation


def spearmanr(pred: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr as _spearmanr

    return float(_spearmanr(pred, gold)[0]) if np.std(pred) > 0 else 0.0


# Keys: exactly core/config.py's METRIC_NAMES (the names a task file may use; a test checks it).
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearmanr,
}


def compute(names: Sequence[str], pred: Sequence[float], gold: Sequence[float], suffix: str = "") -> dict[str, float]:
    """{name + suffix: value} for every metric in `names`. MNLI's mismatched set uses suffix "_mm"."""
    p, g = np.asarray(pred), np.asarray(gold)
    if len(p) != len(g) or len(p) == 0:
        raise ValueError(f"metrics need equal, non-empty predictions and labels, got {len(p)} and {len(g)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}")
    return {n + suffix: METRICS[n](p, g) for n in names}
