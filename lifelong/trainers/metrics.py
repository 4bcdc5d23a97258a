"""Evaluation metrics: AUC (torchmetrics), GAUC and logloss; and a process's peak memory.

GAUC = sum over users of (impressions_u * AUC_u) / sum of impressions_u, over users whose
samples hold both classes; the others are excluded and counted. TorchRec's GAUC averages groups
without weights and needs padded 3-d input, so GAUC is computed here (ties count one half).
"""
from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    if labels.min() == labels.max():
        return float("nan")
    return float(binary_auroc(torch.from_numpy(scores).float(), torch.from_numpy(labels).long()))


def logloss(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits `scores`."""
    return float(torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(scores).double(), torch.from_numpy(labels).double()))


def _average_ranks(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """1-based ranks of scores within each group, ties given their average rank."""
    order = np.lexsort((scores, groups))
    g, s = groups[order], scores[order]
    new_run = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])]
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.r_[run_start, len(s)])
    group_start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    pos_in_group = np.arange(len(s)) - np.repeat(group_start, np.diff(np.r_[group_start, len(s)]))
    first = pos_in_group[run_start]  # 0-based in-group position of each tie run
    ranks = np.empty(len(s))
    ranks[order] = (first + (run_len + 1) / 2.0)[run_id]
    return ranks


def gauc(scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> tuple[float, int, int]:
    """(GAUC, users counted, users excluded for holding one class only)."""
    uniq, g = np.unique(users, return_inverse=True)
    n = np.bincount(g)
    pos = np.bincount(g, weights=labels.astype(float))
    neg = n - pos
    ranks = _average_ranks(g, scores.astype(float))
    rank_sum_pos = np.bincount(g, weights=ranks * labels)
    ok = (pos > 0) & (neg > 0)
    auc_u = (rank_sum_pos[ok] - pos[ok] * (pos[ok] + 1) / 2) / (pos[ok] * neg[ok])  # Mann-Whitney
    if not ok.any():
        return float("nan"), 0, int(len(uniq))
    return float((auc_u * n[ok]).sum() / n[ok].sum()), int(ok.sum()), int((~ok).sum())


def evaluate_arrays(scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> dict[str, float]:
    g, n_users, n_excluded = gauc(scores, labels, users)
    return {"auc": auc(scores, labels), "gauc": g, "gauc_users": n_users,
            "gauc_excluded_users": n_excluded, "logloss": logloss(scores, labels),
            "samples": int(len(labels)), "positive_rate": float(labels.mean())}


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: VmHWM on Linux (ru_maxrss is inherited across
    fork + exec, so a child would report its parent's peak), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_rss() -> None:
    """Start this process's peak resident set (`peak_rss_mb`) again from its current size (Linux:
    `clear_refs` 5); elsewhere the peak keeps counting from the process's start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
