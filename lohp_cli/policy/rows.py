"""The ``rows`` policy backbone: the target network's neurons as a set of tokens.

Every output unit of every layer of the target model is one token, so the backbone treats each
layer's units as a set, as the weights do: permuting the hidden units of a layer (the rows of its
weight, its bias and BatchNorm entries, and the matching columns of the next layer's weight)
permutes the backbone's output the same way, and so does permuting the classes (the rows of the
output layer, with the condition's class blocks).

The layout is read as a chain of layers (:func:`unit_layers`): a parameter of two or more
dimensions ``[out, in, *kernel]`` (a Linear or Conv weight) starts a layer of ``out`` units, and
the 1-D parameters ``[out]`` after it (its bias, a BatchNorm's scale and shift) belong to its units.
A layer is *fed* by the one before when ``in`` equals that layer's number of units.

- A unit of a layer that is not fed (its inputs are fixed coordinates: pixels, extractor features)
  holds its weight row, read by a projection that the layer's units share.
- A fed layer's weight is read as edges: entry ``W[i, j]`` (a kernel of the conv) links unit i to
  unit j of the layer before. A message per edge from the edge and both end tokens, averaged over
  j, reaches token i (its incoming weights) and averaged over i reaches token j (its outgoing
  weights, column j), so a hidden unit sees both. The step of ``W[i, j]`` is read off the same
  edge message at the end and scattered back into the weight.
- Per-unit vectors (bias, BatchNorm) enter and leave through projections the layer's units share.
- A learned embedding per layer, none per unit; self-attention over all tokens; the step/condition
  embedding as FiLM. With class-subset tasks (the condition made of one block per class) class
  token i also reads block i, and the mean block joins the global embedding.

Output projections start at zero: an untrained policy is the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from lohp_cli.errors import ConfigError
from lohp_cli.tasks.layout import ParamEntry, ParamLayout
from lohp_cli.tasks.symmetry import ClassSymmetry


@dataclass(frozen=True)
class UnitLayer:
    """One layer of the chain: its weight ``[out, in, *kernel]``, its per-unit vectors
    ``[out]``, and whether its inputs are the units of the layer before (``fed``)."""

    weight: ParamEntry
    extras: tuple[ParamEntry, ...]
    fed: bool

    @property
    def units(self) -> int:
        return self.weight.shape[0]

    @property
    def inputs(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel(self) -> int:
        return math.prod(self.weight.shape[2:])

    @property
    def row(self) -> int:
        return self.inputs * self.kernel


def unit_layers(layout: ParamLayout) -> tuple[UnitLayer, ...]:
    """The layout as a chain of layers; a ConfigError when a parameter fits none."""
    layers: list[UnitLayer] = []
    for e in layout.entries:
        if len(e.shape) >= 2:
            fed = bool(layers) and e.shape[1] == layers[-1].units
            layers.append(UnitLayer(e, (), fed))
        elif len(e.shape) == 1 and layers and e.shape[0] == layers[-1].units:
            layers[-1] = replace(layers[-1], extras=(*layers[-1].extras, e))
        else:
            raise ConfigError(
                f"policy.backbone = 'rows' reads the target model as a chain of layers (a weight "
                f"[out, in, ...] followed by vectors [out]); parameter '{e.name}' of shape "
                f"{list(e.shape)} is neither. Use backbone 'unet' or 'mlp' for this model."
            )
    return tuple(layers)


def zero_linear(d_in: int, d_out: int) -> nn.Linear:
    lin = nn.Linear(d_in, d_out)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


class EdgeMessage(nn.Module):
    """``silu(e_ij + A h_src_j + B h_dst_i)``: one message ``[B, out, in, d]`` per edge."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.src = nn.Linear(d, d)
        self.dst = nn.Linear(d, d, bias=False)

    def forward(self, e: torch.Tensor, h_src: torch.Tensor, h_dst: torch.Tensor) -> torch.Tensor:
        # e [B, out, in, d]; h_src [B, in, d]; h_dst [B, out, d]
        return nn.functional.silu(e + self.src(h_src)[:, None] + self.dst(h_dst)[:, :, None])


class LayerIO(nn.Module):
    """What one layer's tokens read from the state and write into the step (two channels).

    With ``channels`` = 2 (``policy.state_input = "grad"``) every coordinate comes with the
    support-loss gradient's: a unit reads its weight row (or edge) and the same entries of the
    gradient side by side, so the gradient is permuted with the units like the weights are.
    """

    def __init__(self, layer: UnitLayer, d: int, channels: int = 1) -> None:
        super().__init__()
        self.layer, self.width, self.channels = layer, d, channels
        n_extra = len(layer.extras)
        if layer.fed:
            self.edge_in = nn.Linear(channels * layer.kernel, d)
            self.edge_msg = EdgeMessage(d)
            self.edge_out = zero_linear(d, 2 * layer.kernel)
        else:
            self.row_in = nn.Linear(channels * layer.row, d)
            self.row_out = zero_linear(d, 2 * layer.row)
        self.extra_in = nn.Linear(channels * n_extra, d) if n_extra else None
        self.extra_out = zero_linear(d, 2 * n_extra) if n_extra else None

    def read(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Initial tokens ``[B, out, d]`` of the state ``s [B, ch, P]``, and the edge embeddings
        ``[B, out, in, d]`` of a fed layer (None otherwise)."""
        lay, b, ch = self.layer, s.shape[0], self.channels
        w = s[:, :, lay.weight.offset : lay.weight.offset + lay.weight.numel]  # [B, ch, numel]
        if lay.fed:  # a fed layer's units learn their weights from the edge messages
            h = s.new_zeros(b, lay.units, self.width)
            w = w.reshape(b, ch, lay.units, lay.inputs, lay.kernel).permute(0, 2, 3, 1, 4)
            edges = self.edge_in(w.reshape(b, lay.units, lay.inputs, ch * lay.kernel))
        else:
            w = w.reshape(b, ch, lay.units, lay.row).transpose(1, 2)  # [B, out, ch, row]
            h, edges = self.row_in(w.reshape(b, lay.units, ch * lay.row)), None  # [B, out, d]
        if self.extra_in is not None:
            h = h + self.extra_in(self.extras(s))
        return h, edges

    def extras(self, s: torch.Tensor) -> torch.Tensor:
        """The per-unit vectors of ``s [B, ch, P]`` side by side: ``[B, out, ch · n_extra]``."""
        parts = [s[:, c, e.offset : e.offset + e.numel] for c in range(s.shape[1])
                 for e in self.layer.extras]  # fmt: skip
        return torch.stack(parts, -1)

    def write(
        self, h: torch.Tensor, edges: torch.Tensor | None, h_src: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """The two-channel step of each of the layer's parameters, ``[B, 2, numel]`` each, in
        layout order, from its final tokens ``h [B, out, d]`` (and the layer before's)."""
        lay, b = self.layer, h.shape[0]
        if edges is not None and h_src is not None:  # a fed layer
            m = self.edge_msg(edges, h_src, h)  # [B, out, in, d]
            w = self.edge_out(m).view(b, lay.units, lay.inputs, 2, lay.kernel)
            w = w.permute(0, 3, 1, 2, 4)  # [B, 2, out, in, kernel]
        else:
            w = self.row_out(h).view(b, lay.units, 2, lay.row).transpose(1, 2)  # [B, 2, out, row]
        out = [w.reshape(b, 2, lay.weight.numel)]
        if self.extra_out is not None:
            x = self.extra_out(h).view(b, lay.units, 2, len(lay.extras))
            out += [x[..., k].transpose(1, 2) for k in range(len(lay.extras))]  # [B, 2, out]
        return out


class RowBlock(nn.Module):
    """Edge messages between linked layers, then a pre-norm transformer block over all tokens
    with FiLM from the global context."""

    def __init__(self, layers: tuple[UnitLayer, ...], d: int, heads: int) -> None:
        super().__init__()
        fed = [lay.fed for lay in layers]
        self.msgs = nn.ModuleList(EdgeMessage(d) if f else nn.Identity() for f in fed)
        self.to_dst = nn.ModuleList(nn.Linear(d, d) if f else nn.Identity() for f in fed)
        self.to_src = nn.ModuleList(nn.Linear(d, d) if f else nn.Identity() for f in fed)
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.film = nn.Linear(d, 2 * d)
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))
        self.fed = fed

    def forward(
        self, hs: list[torch.Tensor], edges: list[torch.Tensor | None], ctx: torch.Tensor
    ) -> list[torch.Tensor]:
        new = list(hs)
        for li, f in enumerate(self.fed):
            if f:
                m = self.msgs[li](edges[li], hs[li - 1], hs[li])  # [B, out, in, d]
                new[li] = new[li] + self.to_dst[li](m.mean(2))  # over its inputs j
                new[li - 1] = new[li - 1] + self.to_src[li](m.mean(1))  # over its outputs i
        sizes = [h.shape[1] for h in new]
        h = torch.cat(new, dim=1)  # [B, T, d], T = all units
        scale, shift = self.film(ctx).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, d] each
        x = self.norm1(h) * (1 + scale) + shift
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v)  # [B, heads, T, d / heads]
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, d))
        h = h + self.mlp(self.norm2(h))
        return list(h.split(sizes, dim=1))


class RowSetBackbone(nn.Module):
    """``(s [B, P], emb [B, E], cond [B, D])`` -> ``[B, 2, P]`` over one token per unit.

    ``takes_condition`` is True when the condition is made of one block per output unit (class
    subsets): :class:`~lohp_cli.policy.gaussian.LoHpPolicy` then passes the normalised condition
    and leaves it out of ``emb``, so the whole policy is equivariant to reordering the classes.
    """

    def __init__(
        self,
        layout: ParamLayout,
        cond_dim: int,
        emb_dim: int,
        width: int = 64,
        blocks: int = 2,
        heads: int = 4,
        channels: int = 1,
    ) -> None:
        super().__init__()
        self.layers = unit_layers(layout)
        self.size = layout.size
        d = width
        classes = self.layers[-1].units
        self.takes_condition = classes > 1 and ClassSymmetry.applies(layout, classes, cond_dim)
        self.io = nn.ModuleList(LayerIO(lay, d, channels) for lay in self.layers)
        self.layer_emb = nn.Parameter(torch.randn(len(self.layers), d) * 0.02)
        self.emb_in = nn.Linear(emb_dim, d)
        if self.takes_condition:
            self.block_in = nn.Linear(cond_dim // classes, d)  # class i's block -> class token i
            self.pool_in = nn.Linear(cond_dim // classes, d)  # the mean block -> global context
        self.blocks = nn.ModuleList(RowBlock(self.layers, d, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(d)

    def forward(
        self, s: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``s [B, P]`` (or ``[B, channels, P]``), ``emb [B, E]``, ``cond [B, D]`` (when
        ``takes_condition``) -> ``[B, 2, P]``."""
        b = s.shape[0]
        ctx = self.emb_in(emb)  # [B, d]
        s = s.unsqueeze(1) if s.dim() == 2 else s  # [B, ch, P]
        read = [io.read(s) for io in self.io]
        hs = [h + self.layer_emb[li] for li, (h, _) in enumerate(read)]
        edges = [e for _, e in read]
        if self.takes_condition:
            if cond is None:
                raise ValueError("this backbone reads the class blocks of the condition: pass cond")
            blocks = cond.view(b, self.layers[-1].units, -1)  # [B, C, D/C]
            hs[-1] = hs[-1] + self.block_in(blocks)
            ctx = ctx + self.pool_in(blocks.mean(1))
        ctx = nn.functional.silu(ctx)
        hs = [h + ctx[:, None] for h in hs]
        for block in self.blocks:
            hs = block(hs, edges, ctx)
        hs = [self.norm(h) for h in hs]
        out: list[torch.Tensor] = []
        for li, io in enumerate(self.io):
            out += io.write(hs[li], edges[li], hs[li - 1] if li else None)
        return torch.cat(out, dim=2)  # [B, 2, P], layout order
