"""Label-order symmetry of class-subset tasks, used to augment trajectories.

A task is an ordered tuple of classes; reordering it (label j becomes label π(j)) gives another
valid task whose optimal weights are the same network with the rows of its output layer reordered.
Applying one permutation π to a stored run — the output rows of every recorded state, and the class
blocks of the task condition — therefore yields a run that SGD/Adam/SAM could have produced on the
reordered task from the reordered start (exactly so: every optimizer here is equivariant to a
permutation of coordinates). With C = 5 that turns each source task into 120.

The permutation acts in the normalised space, so the normalisation statistics must be symmetric
across class rows; :meth:`ClassSymmetry.symmetrize` averages them over the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lohp_cli.errors import ConfigError
from lohp_cli.tasks.layout import ParamLayout


@dataclass(frozen=True)
class ClassSymmetry:
    """Where the class rows live in the flat weight vector ``[P]`` and the condition ``[D]``.

    ``rows [C, R]``: flat indices of output row j (its weights, then its bias);
    ``blocks [C, Dc]``: condition indices of class j's block.
    """

    size: int
    cond_dim: int
    rows: torch.Tensor
    blocks: torch.Tensor

    @staticmethod
    def applies(layout: ParamLayout, classes: int | None, cond_dim: int) -> bool:
        """Whether the model ends in a per-class linear layer and the condition in class blocks."""
        entries = layout.entries
        return (
            classes is not None
            and classes > 1
            and len(entries) >= 2
            and len(entries[-2].shape) == 2
            and entries[-2].shape[0] == classes
            and entries[-1].shape == (classes,)
            and cond_dim % classes == 0
        )

    @classmethod
    def of(cls, layout: ParamLayout, classes: int | None, cond_dim: int) -> ClassSymmetry:
        """Symmetry of a model whose last two parameters are its output layer ``[C, H]``/``[C]``."""
        if classes is None or not cls.applies(layout, classes, cond_dim):
            raise ConfigError(
                "augment='classes' needs class-subset tasks, a target model that ends in a linear "
                "layer with one output per class, and a condition made of class blocks; set "
                "augment='none'."
            )
        entries = layout.entries
        w, b = entries[-2], entries[-1]
        h = w.shape[1]
        weight_rows = w.offset + torch.arange(classes * h).view(classes, h)
        bias_rows = b.offset + torch.arange(classes).view(classes, 1)
        rows = torch.cat([weight_rows, bias_rows], dim=1)  # [C, H+1]
        blocks = torch.arange(cond_dim).view(classes, cond_dim // classes)
        return cls(layout.size, cond_dim, rows, blocks)

    @property
    def classes(self) -> int:
        return self.rows.shape[0]

    def _index(self, perms: torch.Tensor, groups: torch.Tensor, size: int) -> torch.Tensor:
        idx = torch.arange(size).repeat(perms.shape[0], 1)  # [B, size]
        src = groups[perms].flatten(1)  # [B, C·R]: the old row that moves to each new row
        idx[:, groups.flatten()] = src
        return idx

    def weight_index(self, perms: torch.Tensor) -> torch.Tensor:
        """Gather index ``[B, P]`` for ``perms [B, C]``: new row j takes old row ``perms[b, j]``."""
        return self._index(perms, self.rows, self.size)

    def cond_index(self, perms: torch.Tensor) -> torch.Tensor:
        """Gather index ``[B, D]`` of the condition's class blocks for ``perms [B, C]``."""
        return self._index(perms, self.blocks, self.cond_dim)

    def permute(
        self, x: torch.Tensor, cond: torch.Tensor, perms: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reorder the classes of trajectories ``x [B, L, P]`` and conditions ``cond [B, D]``."""
        wi = self.weight_index(perms).to(x.device)
        ci = self.cond_index(perms).to(cond.device)
        x = torch.gather(x, 2, wi.unsqueeze(1).expand(-1, x.shape[1], -1))
        return x, torch.gather(cond, 1, ci)

    def symmetrize(self, v: torch.Tensor) -> torch.Tensor:
        """``v [P]`` with each output-row coordinate replaced by its mean over the classes."""
        out = v.clone()
        out[self.rows] = v[self.rows].mean(0, keepdim=True).expand_as(self.rows)
        return out

    def symmetrize_cond(self, v: torch.Tensor) -> torch.Tensor:
        """``v [D]`` with each class block replaced by the mean block."""
        return v[self.blocks].mean(0, keepdim=True).expand_as(self.blocks).reshape(-1).clone()

    def random_perms(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` uniform permutations of the classes ``[n, C]``."""
        return torch.argsort(torch.rand(n, self.classes, generator=gen), dim=1)
