"""Classical models on cell features: scikit-learn pipelines, and their bundle family.

Every builder returns an unfitted ``Pipeline``: median imputation (segmentation can leave a
feature undefined) and standard scaling inside, then the estimator, so CV folds never see the
other side's statistics. All of them have ``predict_proba``: RidgeClassifier(CV) and SVC have
none (``SVC(probability=True)`` is deprecated), so they are wrapped in ``CalibratedClassifierCV``
(sigmoid, 3 folds) rather than softmaxing their decision values by hand. That keeps every saved
pipeline made of library classes only, which the skops allow-list below can name one by one. ``space(trial)``
gives each model's Optuna search space. A bundle's logits are the log of these probabilities;
its temperature is then fitted on a validation side.

Builders use one thread (``n_jobs=1``): the leaderboard runs models side by side, one per core.
Tree ensembles default to sizes that cost about half a CPU-second per fit on ~1,000 cells x 83
features (aria_all), with balanced accuracy within 0.005 of twice the trees.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leukoscope.bundle import CONFIG, Bundle, bundle_family, one_line
from leukoscope.errors import BundleError, ConfigError
from leukoscope.models.registry import register_model

WEIGHTS = "pipeline.skops"
#: The types beyond skops' own safe defaults (primitives, containers, arrays, public scikit-learn
#: estimators) that a saved leukoscope pipeline holds, by exact name: the union of
#: ``skops.io.get_untrusted_types`` over a fitted dump of every registered classical model
#: (tests/test_bundle_security.py keeps it complete). Classes only: trusting a prefix such as
#: ``sklearn.`` let a file name ``sklearn.utils._testing.check_output`` (``subprocess.check_output``)
#: and run a shell command on load.
ALLOWED_TYPES = frozenset({
    "collections.OrderedDict",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "numpy.dtype",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.tree._tree.Tree",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
})


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


def class_probabilities(pipeline: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` spread over all ``n_classes`` columns (a class unseen in training gets 0)."""
    proba = np.asarray(pipeline.predict_proba(X), np.float64)
    seen = np.asarray(pipeline.classes_, int)
    out = np.zeros((len(X), n_classes))
    out[:, seen] = proba
    return out


def log_probabilities(pipeline: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Logits of a classical model: log of its probabilities (softmax undoes it exactly)."""
    return np.log(np.clip(class_probabilities(pipeline, X, n_classes), 1e-7, 1.0))


def save_pipeline(pipeline: Any, path: Path) -> None:
    """Write a fitted pipeline with skops (never pickle), refusing types outside the allow-list."""
    import skops.io as sio

    sio.dump(pipeline, path)
    _refuse_untrusted(path)


def _refuse_untrusted(path: Path) -> None:
    """Name the file's types that are off ``ALLOWED_TYPES`` (``skops.io.load`` only says that some are).

    ``get_untrusted_types`` only reads the schema: nothing in the file is imported or built.
    """
    import skops.io as sio

    bad = sorted(set(sio.get_untrusted_types(file=path)) - ALLOWED_TYPES)
    if bad:
        raise BundleError(f"{path}: refusing to load types outside the allow-list (they could run code): "
                          f"{', '.join(bad)}")


def load_pipeline(path: Path) -> Any:
    """Read a skops pipeline, trusting only types on the allow-list (never blindly)."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path.parent}: classical bundle has no {path.name}")
    try:
        _refuse_untrusted(path)
        # the allow-list again, not what the check found: skops audits the file it actually reads
        return sio.load(path, trusted=sorted(ALLOWED_TYPES))
    except BundleError:
        raise
    except Exception as e:  # a corrupt, truncated or foreign file: say which, on one line
        raise BundleError(f"{path}: cannot read the saved pipeline ({one_line(e)})") from None


def check_pipeline(pipeline: Any, path: Path, n_classes: int, n_features: int) -> None:
    """Refuse a pipeline that does not fit its config: a class index outside the config's classes
    (three classes named, four predicted) or another number of input features than the extractor's."""
    seen = getattr(pipeline, "classes_", None)
    if seen is None or not hasattr(pipeline, "predict_proba"):
        raise BundleError(f"{path}: not a fitted classifier with predict_proba")
    seen = np.asarray(seen)
    if seen.dtype.kind not in "iu" or len(np.unique(seen)) != len(seen) or len(seen) > n_classes \
            or seen.min() < 0 or seen.max() >= n_classes:
        raise BundleError(f"{path}: the pipeline predicts classes {seen.tolist()}, but {CONFIG} lists "
                          f"{n_classes} (indices 0..{n_classes - 1})")
    expected = getattr(pipeline, "n_features_in_", n_features)
    if expected != n_features:
        raise BundleError(f"{path}: the pipeline takes {expected} features, but the {CONFIG} 'features' "
                          f"settings give {n_features}")


@bundle_family("classical")
class ClassicalBundle(Bundle):
    """A fitted pipeline plus the feature settings that turn images into its input."""

    def __init__(self, path: Path, config: dict[str, Any], pipeline: Any):
        from leukoscope.features import from_spec

        super().__init__(path, config)
        self.pipeline = pipeline
        try:
            self.extractor = from_spec(config["features"])
        except ConfigError as e:
            raise BundleError(f"{self.path / CONFIG}: features: {e}") from None
        check_pipeline(pipeline, self.path / WEIGHTS, len(self.classes), len(self.extractor.names()))

    @classmethod
    def load(cls, path: Path, config: dict[str, Any]) -> ClassicalBundle:
        return cls(path, config, load_pipeline(Path(path) / WEIGHTS))

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The feature rows the pipeline sees (used by explanations too)."""
        return self.extractor.compute(images)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return log_probabilities(self.pipeline, self.features(images), len(self.classes))
