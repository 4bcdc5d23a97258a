"""GAUC / AUC / logloss against plain reference computations."""
from __future__ import annotations

import itertools

import numpy as np

from lifelong.trainers.metrics import auc, gauc, logloss


def _pair_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_gauc_matches_pairwise_reference_with_ties():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 15, 300)
    labels = rng.integers(0, 2, 300).astype(float)
    scores = np.round(rng.normal(size=300) + labels * 0.5, 1)  # rounding makes ties
    labels[users == 3] = 1  # one-class user: excluded and counted
    got, n_users, excluded = gauc(scores, labels, users)
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() != labels[m].max():
            num += _pair_auc(scores[m], labels[m]) * m.sum()
            den += m.sum()
    assert abs(got - num / den) < 1e-12
    assert excluded == 1 and n_users == len(np.unique(users)) - 1
    assert abs(auc(scores, labels) - _pair_auc(scores, labels)) < 1e-6


def test_logloss():
    s, y = np.array([0.0, 2.0]), np.array([1.0, 0.0])
    assert abs(logloss(s, y) - np.mean([np.log(2), np.log(1 + np.e ** 2)])) < 1e-12
