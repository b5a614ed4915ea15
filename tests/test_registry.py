"""Every registered classical model: builds, fits a small matrix with gaps, gives probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from leukoscope.errors import ConfigError
from leukoscope.models.registry import get_model, list_models

CLASSICAL = list_models(family="classical")


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """As in the leaderboard's workers: spinning BLAS threads slow tiny fits on a busy machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def small_matrix(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable-ish features with a missing value, as segmentation can leave."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), 15)
    X = rng.normal(size=(len(y), 6)) + y[:, None] * 1.5
    X[3, 2] = np.nan
    return X.astype(np.float32), y


def test_the_issue_models_are_all_registered() -> None:
    wanted = {"svc", "xgboost", "lightgbm", "lda", "ridge_cv", "ridge", "random_forest", "extra_trees",
              "knn", "gaussian_nb", "logistic_regression", "pca-svm"}
    assert wanted <= set(CLASSICAL)
    assert list_models("ridge*", family="classical") == ["ridge", "ridge_cv"]
    with pytest.raises(ConfigError, match="unknown model"):
        get_model("no-such-model")


@pytest.mark.parametrize("name", CLASSICAL)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_builds_fits_and_predicts_probabilities(name: str, n_classes: int) -> None:
    X, y = small_matrix(n_classes)
    pipe = get_model(name).build(seed=0).fit(X, y)
    proba = pipe.predict_proba(X)
    assert proba.shape == (len(y), n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba.argmax(axis=1) == y).mean() > 0.7  # learnt something
    assert "scale" in pipe.named_steps and "impute" in pipe.named_steps


@pytest.mark.parametrize("name", [n for n in CLASSICAL if get_model(n).space is not None])
def test_search_space_gives_buildable_params(name: str) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    params = get_model(name).space(trial)
    X, y = small_matrix(2)
    assert get_model(name).build(**params).fit(X, y).predict_proba(X).shape == (len(y), 2)
