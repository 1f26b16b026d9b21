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


def min_cost_assignment(cost: np.ndarray) -> np.ndarray:
    """The permutation ``p [n]`` minimising ``sum_j cost[j, p[j]]`` of a square ``cost [n, n]``.

    The Hungarian method (shortest augmenting paths with potentials, O(n³)); ties go to the lower
    column, so the answer is deterministic.
    """
    n = cost.shape[0]
    inf = float("inf")
    u, v = np.zeros(n + 1), np.zeros(n + 1)  # row and column potentials, 1-based
    owner = np.zeros(n + 1, dtype=np.int64)  # owner[col]: the row assigned to col (0: none)
    way = np.zeros(n + 1, dtype=np.int64)
    for row in range(1, n + 1):
        owner[0], col0 = row, 0
        minv, used = np.full(n + 1, inf), np.zeros(n + 1, dtype=bool)
        while True:  # grow an alternating tree until it reaches a free column
            used[col0] = True
            r0, delta, col1 = owner[col0], inf, 0
            for col in range(1, n + 1):
                if used[col]:
                    continue
                cur = cost[r0 - 1, col - 1] - u[r0] - v[col]
                if cur < minv[col]:
                    minv[col], way[col] = cur, col0
                if minv[col] < delta:
                    delta, col1 = minv[col], col
            for col in range(n + 1):
                if used[col]:
                    u[owner[col]] += delta
                    v[col] -= delta
                else:
                    minv[col] -= delta
            col0 = col1
            if owner[col0] == 0:
                break
        while col0:  # flip the augmenting path
            col1 = way[col0]
            owner[col0] = owner[col1]
            col0 = col1
    perm = np.zeros(n, dtype=np.int64)
    for col in range(1, n + 1):
        perm[owner[col] - 1] = col - 1
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
