"""A k-fold ensemble's arithmetic: mean probabilities, fold disagreement, an interval.

Input everywhere is the folds' softmax outputs for one subject, ``(K, Z, C, H, W)`` (fold, slice,
class 0 background / 1 myocardium / 2 infarct, rows, columns). The ensemble label is the argmax of
the mean probability (MONAI's ``MeanEnsemble``, as nnU-Net ensembles folds); the per-voxel
uncertainty is the standard deviation of the infarct probability across folds (0 = every fold
agrees; at most 0.5); the infarct % interval is the range of the folds' own infarct % (each fold's
argmax), which with 5 folds is what the data can honestly say -- no distribution is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mi_pipeline import metrics

INFARCT = 2
UNCERTAINTY_FILE = "infarct_uncertainty.nii.gz"
METHOD = "mean of the folds' softmax probabilities (monai MeanEnsemble), label = argmax"
UNCERTAINTY_METHOD = "per-voxel standard deviation of the infarct probability across folds"
INTERVAL_METHOD = "min..max of the folds' own infarct % (each fold's argmax)"


@dataclass(frozen=True)
class FoldAgreement:
    """What K folds say about one subject."""

    mean: np.ndarray  # (Z, C, H, W) mean probability
    uncertainty: np.ndarray  # (Z, H, W) std of the infarct probability across folds
    per_fold_percent: list[float]  # each fold's own infarct % of myocardium

    @property
    def label(self) -> np.ndarray:
        return self.mean.argmax(axis=1).astype(np.uint8)

    def mean_uncertainty(self, region: np.ndarray) -> float:
        """Mean fold disagreement over ``region`` (e.g. the predicted myocardium); 0 when it is empty."""
        return float(self.uncertainty[region].mean()) if region.any() else 0.0

    def summary(self) -> dict[str, Any]:
        """The ``ensemble`` section of report.json (without the checkpoints)."""
        label = self.label
        per_fold = [round(p, 2) for p in self.per_fold_percent]
        return {
            "folds": len(per_fold), "method": METHOD,
            "infarct_percent_per_fold": per_fold,
            "infarct_percent_interval": [min(per_fold), max(per_fold)], "interval_method": INTERVAL_METHOD,
            "infarct_percent_sd": round(float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0, 3),
            "uncertainty_method": UNCERTAINTY_METHOD,
            "mean_uncertainty_myocardium": round(self.mean_uncertainty(label > 0), 5),
        }


def mean_probabilities(fold_probs: np.ndarray) -> np.ndarray:
    """Average over the fold axis with MONAI's ensemble transform (equal weights)."""
    from monai.transforms import MeanEnsemble

    return np.asarray(MeanEnsemble()(torch.from_numpy(np.ascontiguousarray(fold_probs))))


def agree(fold_probs: np.ndarray) -> FoldAgreement:
    """Combine one subject's fold probabilities ``(K, Z, C, H, W)``."""
    if fold_probs.ndim != 5 or fold_probs.shape[0] < 2:
        raise ValueError(f"expected (K>=2, Z, C, H, W) fold probabilities, got shape {fold_probs.shape}")
    per_fold = []
    for probs in fold_probs:
        label = probs.argmax(axis=1)
        per_fold.append(metrics.infarct_percent(label > 0, label == INFARCT))
    return FoldAgreement(mean=mean_probabilities(fold_probs).astype(np.float32),
                         uncertainty=fold_probs[:, :, INFARCT].std(axis=0).astype(np.float32),
                         per_fold_percent=per_fold)
