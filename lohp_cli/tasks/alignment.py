"""Class alignment: which label of one class-subset task stands for which label of another.

Copying weights from a source task to a target task only makes sense label by label: output row j
of the copy must be the row of the source label that means what target label j means. Two tasks
that share a class (by identity: the data set's class) match it; the remaining labels are matched
by a cost (in lohp the distance between class-mean condition blocks) with the least total cost.
An alignment is a permutation ``perm [C]`` in :class:`~lohp_cli.tasks.symmetry.ClassSymmetry`'s
convention: target label j takes source label ``perm[j]``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


def min_cost_assignment(cost: np.ndarray) -> np.ndarray:
    """The permutation ``p [n]`` minimising ``sum_j cost[j, p[j]]`` of a square ``cost [n, n]``.

    SciPy's ``linear_sum_assignment`` (a shortest-augmenting-path solver in C, deterministic for
    a given matrix): a 20-way alignment against every task of a 1,000-task store is 1,000 of
    these per target task, which a Python Hungarian loop made take seconds.
    """
    rows, cols = linear_sum_assignment(np.asarray(cost, dtype=np.float64))
    perm = np.empty(cost.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def align_classes(
    target: Sequence[Hashable] | None, source: Sequence[Hashable] | None, cost: np.ndarray
) -> np.ndarray:
    """The alignment ``perm [C]`` of a source task to a target task: target label j takes
    source label ``perm[j]``.

    ``target``/``source``: the class (identity) of each label, or None when the tasks have no
    class identities; ``cost [C, C]``: ``cost[j, i]`` the mismatch of target label j with source
    label i. Labels of a class both tasks have are matched by identity; the others by
    :func:`min_cost_assignment` on their part of ``cost``.
    """
    c = cost.shape[0]
    perm = np.full(c, -1, dtype=np.int64)
    if target is not None and source is not None:
        where = {cls: i for i, cls in enumerate(source)}
        for j, cls in enumerate(target):
            if cls in where:
                perm[j] = where[cls]
    rows = np.flatnonzero(perm < 0)
    cols = np.setdiff1d(np.arange(c), perm[perm >= 0])
    if rows.size:
        perm[rows] = cols[min_cost_assignment(cost[np.ix_(rows, cols)])]
    return perm
