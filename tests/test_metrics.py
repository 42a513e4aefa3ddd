"""Evaluation metrics equal scikit-learn's on the same predictions."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mnist_jax import evaluate


@pytest.mark.parametrize("seed", range(4))
def test_metrics_equal_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(50, 500))
  labels = rng.integers(0, 10, n)
  predicted = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 10, n))
  if seed == 1:
    predicted[predicted == 3] = 4  # A class never predicted.
  if seed == 2:
    labels[labels == 7] = 1  # A class never present.
  ours = evaluate.classification_metrics(labels, predicted, 10)
  assert ours["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
  np.testing.assert_array_equal(ours["confusion_matrix"],
                                skm.confusion_matrix(labels, predicted, labels=range(10)))
  for avg in (None, "macro", "weighted"):
    p, r, f, _ = skm.precision_recall_fscore_support(
        labels, predicted, labels=range(10), average=avg, zero_division=0)
    key = "per_class" if avg is None else avg
    np.testing.assert_allclose(ours["precision"][key], p, atol=1e-12)
    np.testing.assert_allclose(ours["recall"][key], r, atol=1e-12)
    np.testing.assert_allclose(ours["f1"][key], f, atol=1e-12)


def test_table_lists_every_class():
  labels = np.arange(10).repeat(3)
  m = evaluate.classification_metrics(labels, labels, 10)
  m.update(loss=0.1, checkpoint_step=5)
  table = evaluate.format_table(m, "title")
  assert "accuracy 100.00%" in table and "confusion matrix" in table
  assert all(f"\n{c:>8} " in table for c in range(10))
