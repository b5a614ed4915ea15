"""Classical models on cell features: builders of scikit-learn pipelines (their bundle family is
``leukoscope.bundle.classical``).

Every builder returns an unfitted ``Pipeline``: median imputation (segmentation can leave a
feature undefined) and standard scaling inside, then the estimator, so CV folds never see the
other side's statistics. All of them have ``predict_proba``: RidgeClassifier(CV) and SVC have
none (``SVC(probability=True)`` is deprecated), so they are wrapped in ``CalibratedClassifierCV``
(sigmoid, 3 folds) rather than softmaxing their decision values by hand. That keeps every saved
pipeline made of library classes only, which the bundle's skops allow-list can name one by one.
``space(trial)`` gives each model's Optuna search space. A bundle's logits are the log of these
probabilities; its temperature is then fitted on a validation side.

Builders use one thread (``n_jobs=1``): the leaderboard runs models side by side, one per core.
Tree ensembles default to sizes that cost about half a CPU-second per fit on ~1,000 cells x 83
features (aria_all), with balanced accuracy within 0.005 of twice the trees.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leukoscope.models.registry import register_model


def _pipeline(estimator: Any) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler()), ("model", estimator)])


def _svc_space(trial: Any) -> dict[str, Any]:
    return {"C": trial.suggest_float("C", 0.1, 100.0, log=True),
            "gamma": trial.suggest_float("gamma", 1e-4, 1.0, log=True)}


@register_model("svc", family="classical", space=_svc_space)
def svc(C: float = 10.0, gamma: float | str = "scale", seed: int = 0) -> Any:
    """Support vector classifier, RBF kernel (sigmoid-calibrated probabilities)."""
    from sklearn.svm import SVC

    return _pipeline(_calibrated(SVC(C=C, gamma=gamma, random_state=seed), seed))


@register_model("pca-svm", family="classical",
                space=lambda t: {"variance": t.suggest_float("variance", 0.8, 0.99), **_svc_space(t)})
def pca_svm(variance: float = 0.95, C: float = 10.0, gamma: float | str = "scale", seed: int = 0) -> Any:
    """PCA to a share of the variance, then an RBF SVC (the CNN+PCA+SVM notebook's design)."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.svm import SVC

    pipe = _pipeline(_calibrated(SVC(C=C, gamma=gamma, random_state=seed), seed))
    return Pipeline([*pipe.steps[:2], ("pca", PCA(n_components=variance, random_state=seed)),
                     pipe.steps[2]])


@register_model("xgboost", family="classical", space=lambda t: {
    "n_estimators": t.suggest_int("n_estimators", 100, 600, step=50),
    "max_depth": t.suggest_int("max_depth", 2, 8),
    "learning_rate": t.suggest_float("learning_rate", 0.01, 0.3, log=True),
    "subsample": t.suggest_float("subsample", 0.5, 1.0),
    "colsample_bytree": t.suggest_float("colsample_bytree", 0.3, 1.0)})
def xgboost(n_estimators: int = 200, max_depth: int = 4, learning_rate: float = 0.1,
            subsample: float = 0.9, colsample_bytree: float = 0.5, seed: int = 0) -> Any:
    """Gradient-boosted trees (XGBoost, histogram method)."""
    from xgboost import XGBClassifier

    return _pipeline(XGBClassifier(n_estimators=n_estimators, max_depth=max_depth,
                                   learning_rate=learning_rate, subsample=subsample,
                                   colsample_bytree=colsample_bytree, max_bin=64,
                                   tree_method="hist", n_jobs=1, random_state=seed))


@register_model("lightgbm", family="classical", space=lambda t: {
    "n_estimators": t.suggest_int("n_estimators", 100, 600, step=50),
    "num_leaves": t.suggest_int("num_leaves", 7, 63),
    "learning_rate": t.suggest_float("learning_rate", 0.01, 0.3, log=True),
    "colsample_bytree": t.suggest_float("colsample_bytree", 0.3, 1.0)})
def lightgbm(n_estimators: int = 150, num_leaves: int = 15, learning_rate: float = 0.1,
             colsample_bytree: float = 0.5, seed: int = 0) -> Any:
    """Gradient-boosted trees (LightGBM, leaf-wise)."""
    from lightgbm import LGBMClassifier

    return _pipeline(LGBMClassifier(n_estimators=n_estimators, num_leaves=num_leaves,
                                    learning_rate=learning_rate, colsample_bytree=colsample_bytree,
                                    min_child_samples=10, max_bin=63, n_jobs=1, random_state=seed,
                                    verbose=-1))


@register_model("lda", family="classical",
                space=lambda t: {"shrinkage": t.suggest_float("shrinkage", 0.0, 1.0)})
def lda(shrinkage: float | str | None = "auto", seed: int = 0) -> Any:
    """Linear discriminant analysis (Ledoit-Wolf shrinkage by default)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return _pipeline(LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage))


def _calibrated(estimator: Any, seed: int) -> Any:
    """Sigmoid (Platt) probabilities for a classifier with only ``decision_function``.

    ``ensemble=False``: the calibrator is fitted on 3-fold out-of-fold scores, then one base model
    is refitted on everything (scikit-learn's replacement for ``SVC(probability=True)``).
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold

    return CalibratedClassifierCV(estimator, method="sigmoid", ensemble=False,
                                  cv=StratifiedKFold(3, shuffle=True, random_state=seed))


@register_model("ridge_cv", family="classical")
def ridge_cv(seed: int = 0) -> Any:
    """RidgeClassifierCV (alpha chosen by internal CV), sigmoid-calibrated."""
    from sklearn.linear_model import RidgeClassifierCV

    return _pipeline(_calibrated(RidgeClassifierCV(alphas=np.logspace(-3, 3, 13)), seed))


@register_model("ridge", family="classical",
                space=lambda t: {"alpha": t.suggest_float("alpha", 1e-3, 1e3, log=True)})
def ridge(alpha: float = 1.0, seed: int = 0) -> Any:
    """RidgeClassifier, sigmoid-calibrated."""
    from sklearn.linear_model import RidgeClassifier

    return _pipeline(_calibrated(RidgeClassifier(alpha=alpha), seed))


def _forest_space(trial: Any) -> dict[str, Any]:
    return {"n_estimators": trial.suggest_int("n_estimators", 100, 500, step=50),
            "max_features": trial.suggest_float("max_features", 0.1, 1.0),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 8)}


@register_model("random_forest", family="classical", space=_forest_space)
def random_forest(n_estimators: int = 200, max_features: float | str = "sqrt",
                  min_samples_leaf: int = 1, seed: int = 0) -> Any:
    """Random forest."""
    from sklearn.ensemble import RandomForestClassifier

    return _pipeline(RandomForestClassifier(n_estimators=n_estimators, max_features=max_features,
                                            min_samples_leaf=min_samples_leaf, n_jobs=1,
                                            random_state=seed))


@register_model("extra_trees", family="classical", space=_forest_space)
def extra_trees(n_estimators: int = 200, max_features: float | str = "sqrt",
                min_samples_leaf: int = 1, seed: int = 0) -> Any:
    """Extremely randomised trees."""
    from sklearn.ensemble import ExtraTreesClassifier

    return _pipeline(ExtraTreesClassifier(n_estimators=n_estimators, max_features=max_features,
                                          min_samples_leaf=min_samples_leaf, n_jobs=1,
                                          random_state=seed))


@register_model("knn", family="classical", space=lambda t: {
    "n_neighbors": t.suggest_int("n_neighbors", 1, 31, step=2),
    "weights": t.suggest_categorical("weights", ["uniform", "distance"])})
def knn(n_neighbors: int = 7, weights: str = "distance", seed: int = 0) -> Any:
    """k nearest neighbours on standardised features (distance-weighted)."""
    from sklearn.neighbors import KNeighborsClassifier

    return _pipeline(KNeighborsClassifier(n_neighbors=n_neighbors, weights=weights))


@register_model("gaussian_nb", family="classical",
                space=lambda t: {"var_smoothing": t.suggest_float("var_smoothing", 1e-11, 1e-5, log=True)})
def gaussian_nb(var_smoothing: float = 1e-9, seed: int = 0) -> Any:
    """Gaussian naive Bayes."""
    from sklearn.naive_bayes import GaussianNB

    return _pipeline(GaussianNB(var_smoothing=var_smoothing))


@register_model("logistic_regression", family="classical",
                space=lambda t: {"C": t.suggest_float("C", 1e-3, 100.0, log=True)})
def logistic_regression(C: float = 1.0, seed: int = 0) -> Any:
    """Multinomial logistic regression (L2)."""
    from sklearn.linear_model import LogisticRegression

    return _pipeline(LogisticRegression(C=C, max_iter=2000, random_state=seed))
