"""What the benchmark measures: the data sets, their protocols, the models and feature kinds, and
the rows of the README's Results table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SEED = 0
CV = 5
METRIC_KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc")
NETWORKS = ("efficientnet_lite0", "leukonet")
FEATURES = ("handcrafted", "deep", "both")
ROW_KINDS = {"best-classical": "best classical", "pca-svm": "PCA+SVM seed design",
             "efficientnet_lite0": "fine-tuned CNN", "leukonet": "small CNN"}


@dataclass(frozen=True)
class Dataset:
    key: str
    title: str
    folders: tuple[str, ...]
    protocol: str
    #: the network's ``leukoscope train`` options (epochs / input size sized for the 60-minute budget)
    train: dict[str, dict[str, Any]]
    cv: bool = False  # networks: subject-grouped K-fold instead of one held-out split


# Both networks train with their default recipes (train_defaults in src/leukoscope/models/networks.py):
# what `leukoscope train PATH --model NAME` does. Lite0: 128 px, 6 epochs or at least 400 steps
# (aria_all 16 epochs, allidb2 80, the C-NMC folds ~100 tiny ones). Seeds are the defaults' (0).
DATASETS = (
    Dataset("cnmc", "C-NMC cells", ("cnmc_sample", "cnmc_cells"), "subject-grouped",
            {"efficientnet_lite0": {}, "leukonet": {}}, cv=True),
    Dataset("allidb2", "ALL-IDB2", ("allidb2",), "image-level",
            {"efficientnet_lite0": {}, "leukonet": {}}),
    Dataset("aria_all", "4-class ALL (aria_all)", ("aria_all",), "image-level",
            {"efficientnet_lite0": {}, "leukonet": {}}),
)
