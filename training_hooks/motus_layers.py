"""The compact Motus's parts: time and position codes (the shared rotary clock), the experts, one joint-attention
layer, decoders, the action encoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training_hooks.motus_config import MotusConfig

ROPE_BASE = 100.0  # rotary wavelengths from 2π frames up to ~2π·100: clips span ≤ ~16 frames


# --- small parts --------------------------------------------------------------------------------------------
def sincos(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [..., dim] of float positions [...] (timesteps use t × 1000, token indices as is)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device) / half)
    args = positions.float()[..., None] * freqs
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(out, (0, dim - 2 * half))


def rotary(times: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [N, dims/2] of token times [N] (in frames) for a rotary embedding on `dims` channels."""
    freqs = ROPE_BASE ** (-torch.arange(0, dims, 2, device=times.device).float() / dims)
    angles = times.float()[:, None] * freqs
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2·cos.shape[-1] channels of x [B, heads, N, head_dim] by the tokens' angles; the rest
    (content channels) pass through, so heads can match on time, on content, or both."""
    half = cos.shape[-1]
    a, b, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


class TimeEmbed(nn.Module):
    """t in [0, 1] → 256-d sinusoid of 1000·t → MLP → d (one per modality: Motus's action expert has its own)."""

    def __init__(self, d: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sincos(t * 1000, self.freq_dim))


def mlp3x_silu(d_in: int, d: int) -> nn.Sequential:
    """Motus's action/state input encoder."""
    return nn.Sequential(nn.Linear(d_in, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))


def modulation(ada: nn.Linear, cond: torch.Tensor, groups: torch.Tensor | None, n: int) -> tuple[torch.Tensor, ...]:
    """AdaLN parameters per token: `cond` [B, K, d] holds one SiLU'd time embedding per timestep group, `groups`
    [N] says which group each token belongs to (None: K = 1, broadcast over tokens); returns n tensors [B, N|1, d]."""
    m = ada(cond)
    if groups is not None:
        m = m[:, groups]
    return m.chunk(n, dim=-1)


class Expert(nn.Module):
    """One expert's share of a joint layer: norms, q/k/v into the shared head space, out projection and FFN.
    Adaptive experts (video, action) shift/scale/gate with AdaLN from their time embedding (6-way, zero-initialised
    so every block starts as the identity); the understanding expert is a plain pre-norm residual. An expert with
    `queries=False` only offers keys and values (the understanding expert in the last layer, whose outputs no head
    reads: leaving its query/out/FFN weights out keeps every parameter in use, as DDP requires)."""

    def __init__(self, d: int, cfg: MotusConfig, adaptive: bool, queries: bool = True):
        super().__init__()
        inner = cfg.n_heads * cfg.head_dim
        self.n_heads, self.head_dim, self.queries = cfg.n_heads, cfg.head_dim, queries
        self.norm1 = nn.LayerNorm(d, elementwise_affine=not adaptive)
        self.to_qkv = nn.Linear(d, (3 if queries else 2) * inner)
        self.k_norm = nn.RMSNorm(cfg.head_dim)  # q/k norms keep the joint logits of three streams comparable
        self.ada = None
        if adaptive:
            self.ada = nn.Linear(d, 6 * d)
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)
        if queries:
            self.q_norm = nn.RMSNorm(cfg.head_dim)
            self.out = nn.Linear(inner, d)
            self.norm2 = nn.LayerNorm(d, elementwise_affine=not adaptive)
            self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(approximate="tanh"),
                                     nn.Linear(cfg.ffn_mult * d, d))

    def qkv(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...] | None):
        """(q or None, k, v), each [B, heads, N, head_dim]."""
        h = self.norm1(x)
        if mod is not None:
            h = h * (1 + mod[1]) + mod[0]
        parts = self.to_qkv(h).unflatten(-1, (-1, self.n_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        if not self.queries:
            return None, self.k_norm(parts[0]), parts[1]
        return self.q_norm(parts[0]), self.k_norm(parts[1]), parts[2]

    def residual(self, x: torch.Tensor, attn: torch.Tensor, mod: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        if mod is None:
            x = x + self.out(attn)
            return x + self.ffn(self.norm2(x))
        _, _, gate1, shift2, scale2, gate2 = mod  # the first shift/scale went into qkv
        x = x + gate1 * self.out(attn)
        return x + gate2 * self.ffn(self.norm2(x) * (1 + scale2) + shift2)


class JointLayer(nn.Module):
    """Three experts, one non-causal attention over [video | action | und] with padding keys masked out."""

    def __init__(self, cfg: MotusConfig, last: bool):
        super().__init__()
        self.video = Expert(cfg.d_video, cfg, adaptive=True)
        self.action = Expert(cfg.d_action, cfg, adaptive=True)
        self.und = Expert(cfg.d_und, cfg, adaptive=False, queries=not last)

    def forward(self, xv, xa, xu, cond_v, groups_v, cond_a, key_mask, rope):
        mod_v = modulation(self.video.ada, cond_v, groups_v, 6)
        mod_a = modulation(self.action.ada, cond_a, None, 6)
        streams = [(self.video, xv, mod_v), (self.action, xa, mod_a)]
        if xu is not None:
            streams.append((self.und, xu, None))
        qkv = [expert.qkv(x, mod) for expert, x, mod in streams]
        q = torch.cat([q for q, _, _ in qkv if q is not None], dim=2)
        k = torch.cat([k for _, k, _ in qkv], dim=2)
        v = torch.cat([v for _, _, v in qkv], dim=2)
        if rope is not None:  # video and action tokens on one time axis; language tokens have no time
            n = xv.shape[1] + xa.shape[1]
            q = torch.cat([apply_rotary(q[:, :, :n], *rope), q[:, :, n:]], dim=2)
            k = torch.cat([apply_rotary(k[:, :, :n], *rope), k[:, :, n:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask).transpose(1, 2).flatten(2)
        lengths = [x.shape[1] for expert, x, _ in streams if expert.queries]
        outs = out.split(lengths, dim=1)
        xv = self.video.residual(xv, outs[0], mod_v)
        xa = self.action.residual(xa, outs[1], mod_a)
        xu = self.und.residual(xu, outs[2], None) if xu is not None and self.und.queries else None
        return xv, xa, xu


class Decoder(nn.Module):
    """Motus's output head: LayerNorm, 2-way (shift, scale) time modulation, zero-initialised Linear."""

    def __init__(self, d: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.ada = nn.Linear(d, 2 * d)
        self.head = nn.Linear(d, out_dim)
        for layer in (self.ada, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = modulation(self.ada, cond, None, 2)
        return self.head(self.norm(x) * (1 + scale) + shift)


class ActionEncoder(nn.Module):
    """Action-expert input tokens [state? | A actions | registers] (Motus's `action_expert.input_encoder`)."""

    def __init__(self, action_dim: int, state_dim: int, n_registers: int, d: int):
        super().__init__()
        self.action = mlp3x_silu(action_dim, d)
        self.state = mlp3x_silu(state_dim, d) if state_dim else None
        self.registers = nn.Parameter(torch.randn(n_registers, d) * 0.02) if n_registers else None

    def forward(self, actions: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Tokens [B, n, d] and the index of the first action token."""
        tokens = [self.action(actions)]
        if self.state is not None:
            tokens.insert(0, self.state(state)[:, None])
        if self.registers is not None:
            tokens.append(self.registers.expand(actions.shape[0], -1, -1))
        return torch.cat(tokens, dim=1), int(self.state is not None)
