"""Class-composition diversity tool: composition maths, training on sklearn digits, save/load, plot."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from analysis import classifier as clf
from errors import InputError


class FixedLogits(nn.Module):
  """Fake classifier: the class is the rounded mean pixel * 10 (so outputs are known from the inputs)."""

  def __init__(self, num_classes):
    super().__init__()
    self.num_classes = num_classes
    self.dummy = nn.Parameter(torch.zeros(()))

  def forward(self, x):
    cls = (x.mean((1, 2, 3)) * 10).round().long()
    return 5.0 * nn.functional.one_hot(cls, self.num_classes).float()


def _images_of_classes(classes):
  return torch.stack([torch.full((1, 4, 4), c / 10) for c in classes])


def test_composition_counts_and_entropy():
  comp = clf.class_composition(FixedLogits(4), _images_of_classes([0, 0, 1, 3]), num_classes=4, batch_size=3)
  assert comp['counts'] == [2, 1, 0, 1] and comp['n'] == 4
  np.testing.assert_allclose(comp['fractions'], [0.5, 0.25, 0, 0.25])
  want = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
  assert comp['entropy'] == pytest.approx(want)
  assert comp['normalised_entropy'] == pytest.approx(want / np.log(4))
  p_max = np.exp(5) / (np.exp(5) + 3)
  assert comp['mean_confidence'] == pytest.approx(p_max)


def test_composition_uniform_and_single_class():
  uniform = clf.class_composition(FixedLogits(3), _images_of_classes([0, 1, 2] * 2), 3)
  assert uniform['normalised_entropy'] == pytest.approx(1.0)
  single = clf.class_composition(FixedLogits(3), _images_of_classes([2] * 5), 3)
  assert single['entropy'] == 0.0 and single['counts'] == [0, 0, 5]


def test_composition_errors():
  with pytest.raises(ValueError, match='num_classes=5'):
    clf.class_composition(FixedLogits(4), _images_of_classes([0, 1]), num_classes=5)
  with pytest.raises(ValueError, match='N, C, H, W'):
    clf.class_composition(FixedLogits(4), torch.zeros(3, 4, 4), num_classes=4)


@pytest.fixture(scope='module')
def digits_model():
  from sklearn.datasets import load_digits
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[:, None]
  y = d.target
  model, acc = clf.train_classifier(x[:1400], y[:1400], x[1400:], y[1400:], epochs=15, seed=0)
  return model, acc, x[1400:], y[1400:]


def test_training_on_digits_is_accurate(digits_model):
  model, acc, _, _ = digits_model
  assert acc > 0.90
  assert isinstance(model, clf.SmallCNN) and not model.training


def test_save_load_round_trip(digits_model, tmp_path, umask022):
  model, acc, x_test, y_test = digits_model
  path = str(tmp_path / 'sub' / 'classifier.pt')
  clf.save_classifier(model, path)
  assert os.listdir(tmp_path / 'sub') == ['classifier.pt'] and os.stat(path).st_mode & 0o777 == 0o644
  loaded = clf.load_classifier(path)
  torch.testing.assert_close(clf.predict_logits(loaded, x_test), clf.predict_logits(model, x_test))
  assert clf.accuracy(loaded, x_test, y_test) == pytest.approx(acc)
  with pytest.raises(FileNotFoundError, match='classifier_path'):
    clf.load_classifier(str(tmp_path / 'missing.pt'))
  bad = tmp_path / 'bad.pt'
  bad.write_bytes(b'not a model')
  with pytest.raises(InputError, match='bad.pt is not a TorchScript file.*classifier_path'):
    clf.load_classifier(str(bad))


def test_train_rejects_bad_input():
  x = np.zeros((4, 1, 8, 8), np.float32)
  with pytest.raises(ValueError, match='labels'):
    clf.train_classifier(x, [0, 1], x, [0, 1, 0, 1], epochs=1)
