"""Mix Transformer (MiT) encoders B0-B5 of SegFormer.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
NeurIPS 2021 (arXiv:2105.15203). Four stages; stage ``i`` starts with an *overlapping patch
embedding* (a strided convolution, 7x7/stride 4 for the first stage and 3x3/stride 2 afterwards,
followed by LayerNorm) and stacks transformer blocks made of

* efficient self-attention: keys/values are computed from a sequence spatially reduced by a
  ``R x R`` strided convolution + LayerNorm (reduction ratios R = 8, 4, 2, 1 per stage), so the
  cost is ``N^2 / R^2`` instead of ``N^2``;
* Mix-FFN: ``Linear -> 3x3 depthwise conv -> GELU -> Linear`` (the depthwise convolution leaks
  positional information, so no position embedding is needed);

both pre-normalised (LayerNorm) residual branches with stochastic depth (rate growing linearly
from 0 to 0.1 over all blocks). Each stage ends with a LayerNorm; the encoder returns the four
maps at strides 4, 8, 16 and 32.

Parameter names follow the official SegFormer release (``patch_embed1..4``, ``block1..4``,
``norm1..4``, ``attn.q``/``attn.kv``/``attn.sr``, ``mlp.fc1``/``mlp.dwconv.dwconv``/``mlp.fc2``), so
the ImageNet checkpoints ``mit_bX.pth`` load unchanged; mmsegmentation's converted naming
(``layers.i.0/1/2``) is mapped by :func:`convert_mmseg_mit_state_dict`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

#: embed dims, depths, heads of each variant (Xie et al., Table 6); all use mlp ratio 4, R = 8/4/2/1.
MIT_SETTINGS: dict[str, dict] = {
    "mit_b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "mit_b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "mit_b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "mit_b4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "mit_b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016) per sample: zero a residual branch with probability
    ``p`` and scale the kept ones by ``1 / (1 - p)`` during training; identity in eval mode.
    (Same semantics as ``torchvision.ops.StochasticDepth(p, mode="row")``.)"""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: ``Conv(k, stride s, padding k//2)`` then LayerNorm over channels.

    Returns the token sequence (B, H*W, C) and the spatial size (H, W).
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention with spatial reduction of keys and values (SegFormer Eq. 2).

    ``q = x W_q``; the sequence is reshaped to (B, C, H, W), reduced by a ``R x R`` convolution with
    stride R and LayerNorm-ed when ``R > 1``; ``[k, v] = x_r W_kv``;
    ``out = softmax(q k^T / sqrt(d_head)) v`` per head, then a linear projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            xr = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            xr = self.norm(xr)
        else:
            xr = x
        kv = self.kv(xr).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class DWConv(nn.Module):
    """3x3 depthwise convolution applied to a token sequence of a ``h x w`` map."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Mix-FFN (SegFormer Eq. 3): ``fc2(GELU(DWConv3x3(fc1(x))))``."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), h, w)))
        return self.drop(self.fc2(x))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: ``x + DP(Attn(LN(x)))`` then ``x + DP(MixFFN(LN(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
    ):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        x = x + self.drop_path(self.mlp(self.norm2(x), h, w))
        return x


class MixVisionTransformer(nn.Module):
    """MiT encoder (SegFormer). ``forward`` returns four NCHW maps at strides 4, 8, 16, 32.

    Args:
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        num_heads: attention heads per stage (1, 2, 5, 8).
        sr_ratios: spatial-reduction ratios of the attention (8, 4, 2, 1).
        mlp_ratio: hidden width of Mix-FFN relative to the stage width (4).
        drop_path_rate: maximum stochastic-depth rate, reached by the last block (0.1).
    """

    #: Checkpoint keys of the ImageNet classifier, ignored on loading.
    ignored_pretrained_prefixes = ("head.",)

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 6, 40, 3),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        in_channels: int = 3,
        qkv_bias: bool = True,
    ):
        super().__init__()
        self.name = "mit"
        self.out_channels = list(embed_dims)
        self.strides = [4, 8, 16, 32]
        self.depths = list(depths)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        cur = 0
        prev = in_channels
        for i in range(4):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(prev, embed_dims[i], patch, stride))
            self.add_module(
                f"block{i + 1}",
                nn.ModuleList(
                    MiTBlock(embed_dims[i], num_heads[i], sr_ratios[i], mlp_ratio, rates[cur + j], qkv_bias)
                    for j in range(depths[i])
                ),
            )
            self.add_module(f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=1e-6))
            cur += depths[i]
            prev = embed_dims[i]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # SegFormer init: truncated normal (std 0.02) linears, unit LayerNorm, He (fan-out) convs.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        b = x.shape[0]
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs

    def convert_pretrained_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map an ImageNet checkpoint to this module's names (official names pass through)."""
        if any(k.startswith("layers.") for k in state_dict):
            return convert_mmseg_mit_state_dict(state_dict)
        return dict(state_dict)


def mit(name: str = "mit_b5", **kwargs) -> MixVisionTransformer:
    """Build ``mit_b0`` ... ``mit_b5`` (keyword arguments override the variant's settings)."""
    if name not in MIT_SETTINGS:
        raise ValueError(f"unknown MiT variant {name!r}; expected one of {sorted(MIT_SETTINGS)}")
    model = MixVisionTransformer(**{**MIT_SETTINGS[name], **kwargs})
    model.name = name
    return model


_MMSEG_KEY = re.compile(r"^layers\.(\d+)\.(\d+)\.(.*)$")


def convert_mmseg_mit_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map mmsegmentation's MiT names (``layers.i.0/1/2``) to the official SegFormer names.

    mmseg stores stage ``i`` as ``layers.i.0`` (patch embedding, ``projection`` conv),
    ``layers.i.1.j`` (blocks: ``nn.MultiheadAttention`` with a fused ``in_proj`` of q, k, v and
    ``out_proj``; Mix-FFN as 1x1 convs ``ffn.layers.0``/``.4`` and depthwise ``ffn.layers.1``) and
    ``layers.i.2`` (stage norm). The fused q/kv projection is split into ``attn.q`` and ``attn.kv``
    and the 1x1 conv kernels are reshaped to linear weights. Unrecognised keys are kept unchanged
    (they are then reported as unexpected by the loader).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _MMSEG_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        stage, part, rest = int(m.group(1)) + 1, int(m.group(2)), m.group(3)
        if part == 0:
            out[f"patch_embed{stage}.{rest.replace('projection.', 'proj.', 1)}"] = value
        elif part == 2:
            out[f"norm{stage}.{rest}"] = value
        elif part == 1:
            block, _, sub = rest.partition(".")
            prefix = f"block{stage}.{block}."
            if sub.startswith("attn.attn.in_proj_"):
                kind = sub[len("attn.attn.in_proj_") :]  # weight | bias
                dim = value.shape[0] // 3
                out[prefix + f"attn.q.{kind}"] = value[:dim]
                out[prefix + f"attn.kv.{kind}"] = value[dim:]
            elif sub.startswith("attn.attn.out_proj."):
                out[prefix + "attn.proj." + sub[len("attn.attn.out_proj.") :]] = value
            elif sub.startswith("ffn.layers."):
                idx, _, kind = sub[len("ffn.layers.") :].partition(".")
                if idx in ("0", "4"):
                    name = "fc1" if idx == "0" else "fc2"
                    if kind == "weight" and value.dim() == 4:
                        value = value.flatten(1)
                    out[prefix + f"mlp.{name}.{kind}"] = value
                elif idx == "1":
                    out[prefix + f"mlp.dwconv.dwconv.{kind}"] = value
                else:
                    out[key] = value
            else:  # norm1, norm2, attn.sr, attn.norm keep their names
                out[prefix + sub] = value
        else:
            out[key] = value
    return out
