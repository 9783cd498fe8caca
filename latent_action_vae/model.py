"""The latent-action VAE: flow → DC-AE encoder → tokens → light encoder → 14-d Gaussian, and back to flow.
Variants (coarse residual, frame mask, frame decoder) and the pretrained DC-AE: docs/vae.md#model."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flow_extraction.colour import flow_to_rgb
from latent_action_vae.frame_decoder import FrameConditionedDecoder, frame_input
from latent_action_vae.config import VAEConfig


def build_dcae(cfg: VAEConfig) -> nn.Module:
    from diffusers import AutoencoderDC

    if cfg.pretrained_dcae:
        model = AutoencoderDC.from_pretrained(cfg.pretrained_dcae, local_files_only=True)
        model.requires_grad_(False)
        return model.eval()
    n = len(cfg.widths)
    return AutoencoderDC(
        in_channels=3 if cfg.input == "colour" else 2,
        latent_channels=cfg.latent_channels,
        encoder_block_types="ResBlock",
        decoder_block_types="ResBlock",
        encoder_block_out_channels=tuple(cfg.widths),
        decoder_block_out_channels=tuple(cfg.widths),
        encoder_layers_per_block=(1,) * n,
        decoder_layers_per_block=(1,) * n,
        encoder_qkv_multiscales=((),) * n,
        decoder_qkv_multiscales=((),) * n,
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
    )


class LatentActionVAE(nn.Module):
    def __init__(self, cfg: VAEConfig, align_heads: Sequence[str] = ()):
        """`align_heads`: the embodiments that get a linear alignment head (`align_head: linear`; from the training
        records, stored in the checkpoint); ignored with identity alignment."""
        super().__init__()
        self.cfg = cfg
        self.dcae = build_dcae(cfg)
        side = cfg.image_size // self.dcae.spatial_compression_ratio
        self.token_shape = (self.dcae.config.latent_channels, side, side)
        flat = self.token_shape[0] * side * side
        self.to_posterior = nn.Sequential(nn.LayerNorm(flat), nn.Linear(flat, cfg.hidden), nn.SiLU(),
                                          nn.Linear(cfg.hidden, 2 * cfg.latent_dim))
        if cfg.decoder_condition not in ("none", "frame"):
            raise ValueError(f"vae.decoder_condition must be none or frame, got {cfg.decoder_condition!r}")
        self.frame_conditioned = cfg.decoder_condition == "frame"
        if self.frame_conditioned:
            self.frame_decoder = FrameConditionedDecoder(cfg.latent_dim)
        else:
            self.from_latent = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.hidden), nn.SiLU(),
                                             nn.Linear(cfg.hidden, flat))
            # the DC-AE decoder returns its input's channel count; colour inputs still reconstruct 2-channel flow
            out_ch = self.dcae.config.in_channels
            self.flow_head = nn.Conv2d(out_ch, 2, 1) if out_ch != 2 else nn.Identity()
        # auxiliary: z → the coarse (pooled) flow, linearly; only built when it is trained (older checkpoints load)
        # starting at zero: it predicts no motion, so its error starts at zero flow's, like the decoder's (a random
        # start times the per-source weights of near-static sources, up to 1/0.005², swamps every other term)
        self.coarse_head = None
        if cfg.coarse_weight > 0:
            self.coarse_head = nn.Linear(cfg.latent_dim, 2 * cfg.coarse_cells ** 2)
            nn.init.zeros_(self.coarse_head.weight)
            nn.init.zeros_(self.coarse_head.bias)

        self.skip = nn.Linear(2 * cfg.coarse_cells ** 2, cfg.latent_dim) if cfg.coarse_skip else None
        # coarse_residual: flow = upsampled coarse head + gate · DC-AE decode, the gate starting at 0
        self.decoder_gate = None
        if cfg.coarse_residual:
            if self.coarse_head is None or self.frame_conditioned:
                raise ValueError("vae.coarse_residual needs the coarse head (coarse_weight > 0) and decoder_condition none")
            self.decoder_gate = nn.Parameter(torch.zeros(()))
        # coarse_mask: frame — the upsampled coarse flow times 2·sigmoid(U-Net(first frame, z)); the head starts at
        # zero, so the mask starts at exactly 1 (the PCA start is kept) and learns where the movers are
        if cfg.coarse_mask not in ("none", "frame"):
            raise ValueError(f"vae.coarse_mask must be none or frame, got {cfg.coarse_mask!r}")
        self.coarse_mask = None
        if cfg.coarse_mask == "frame":
            if self.decoder_gate is None:
                raise ValueError("vae.coarse_mask: frame masks the coarse residual's flow: it needs vae.coarse_residual")
            # 1.8× the plain step's time; widths (8, 16, 32, 32) cost 1.36× but gave back a third of the gain
            # (docs/latent_quality.md, sixth round)
            self.coarse_mask = FrameConditionedDecoder(cfg.latent_dim, widths=(16, 32, 64, 64), hidden=128,
                                                       out_channels=1)
            nn.init.zeros_(self.coarse_mask.head.weight)
            nn.init.zeros_(self.coarse_mask.head.bias)
        self.needs_frame = self.frame_conditioned or self.coarse_mask is not None
        # one linear head μ → normalised action change (padded to latent_dim) per aligned embodiment; built last,
        # so the other modules start as they would without it
        if cfg.align_head not in ("identity", "linear"):
            raise ValueError(f"vae.align_head must be identity or linear, got {cfg.align_head!r}")
        self.align_heads = list(align_heads) if cfg.align_head == "linear" else []
        if len(set(self.align_heads)) != len(self.align_heads):
            raise ValueError(f"align heads name an embodiment twice: {self.align_heads}")
        self.align_weight = self.align_bias = None
        if self.align_heads:
            n, d = len(self.align_heads), cfg.latent_dim
            bound = 1 / math.sqrt(d)  # nn.Linear's default range
            self.align_weight = nn.Parameter(torch.empty(n, d, d).uniform_(-bound, bound))
            self.align_bias = nn.Parameter(torch.empty(n, d).uniform_(-bound, bound))

    # --- inputs ---------------------------------------------------------------------------------------------
    def prepare(self, flow_px: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stored flow [B,2,h,w] in canvas pixels + valid [B,h,w] → (network input, target flow, target mask),
        all at image_size². Targets are in network units (flow / flow_scale_px)."""
        size = (self.cfg.image_size, self.cfg.image_size)
        flow = F.interpolate(flow_px.float(), size=size, mode="area")
        mask = F.interpolate(valid.float()[:, None], size=size, mode="area")[:, 0] > 0.999
        target = (flow / self.cfg.flow_scale_px).clamp(-3, 3)
        if self.cfg.input == "colour":
            rgb = flow_to_rgb(flow.cpu().numpy(), self.cfg.flow_scale_px)  # [B,H,W,3] uint8
            x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().to(flow.device) / 127.5 - 1
        else:
            x = target
        return x, target, mask

    def prepare_frame(self, frames: torch.Tensor | None) -> torch.Tensor | None:
        """The decoder's frame input (stored uint8 first frames → [−1, 1] at image_size²); None when the decoder
        takes no frame. A frame-conditioned model given no frames says what to do."""
        if not self.needs_frame:
            return None
        if frames is None:
            raise ValueError("this VAE's decoder reads the first frame (vae.decoder_condition: frame or "
                             "vae.coarse_mask: frame), but the flow artifacts hold no frames: rerun `pyramid flow` "
                             "with flow.store_frames: true")
        return frame_input(frames, self.cfg.image_size)

    # --- model ----------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.dcae.encode(x).latent
        mu, logvar = self.to_posterior(tokens.flatten(1)).chunk(2, dim=1)
        if self.skip is not None:
            mu = mu + self.skip(self.skip_input(x))
        return mu, logvar.clamp(-12, 8)

    def skip_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the coarse skip reads: the input's coarse_cells² pooled flow, in px (flow input only, by config
        validation: x is flow / flow_scale_px)."""
        return F.adaptive_avg_pool2d(x, self.cfg.coarse_cells).flatten(1) * self.cfg.flow_scale_px

    def decode(self, z: torch.Tensor, frame: torch.Tensor | None = None) -> torch.Tensor:
        """z → flow (network units); `frame` is the prepared first frame (`prepare_frame`) when conditioned."""
        if self.frame_conditioned:
            if frame is None:
                raise ValueError("a frame-conditioned decoder needs the pair's first frame")
            return self.frame_decoder(z, frame)
        tokens = self.from_latent(z).view(-1, *self.token_shape)
        flow = self.flow_head(self.dcae.decode(tokens).sample)
        if self.decoder_gate is None:
            return flow
        g = self.cfg.coarse_cells
        coarse = self.coarse_head(z).view(-1, 2, g, g)
        base = F.interpolate(coarse, size=flow.shape[-2:], mode="bilinear", align_corners=False)
        if self.coarse_mask is not None:
            if frame is None:
                raise ValueError("a decoder with vae.coarse_mask: frame needs the pair's first frame")
            base = base * 2 * torch.sigmoid(self.coarse_mask(z, frame))
        return base + self.decoder_gate * flow

    def forward(self, x: torch.Tensor, sample: bool = True, frame: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        out = {"mu": mu, "logvar": logvar, "z": z, "recon": self.decode(z, frame)}
        if self.coarse_head is not None:
            g = self.cfg.coarse_cells
            out["coarse"] = self.coarse_head(z).view(-1, 2, g, g)
        return out

    def predict_action(self, mu: torch.Tensor, embodiments: Sequence[str | None],
                       use: torch.Tensor | None = None) -> torch.Tensor:
        """The alignment heads' read of μ [B, D]: W_e μ + b_e for each sample's embodiment e ([B, D], in the
        normalised action units, padded like the targets). Samples not in `use` (e.g. unlabelled) give zeros and
        need no head; a used sample whose embodiment has none is an error."""
        use = torch.ones(len(embodiments), dtype=torch.bool) if use is None else use.bool().cpu()
        index = torch.zeros(len(embodiments), dtype=torch.long)
        for i, (emb, used) in enumerate(zip(embodiments, use.tolist())):
            if not used:
                continue
            if emb not in self.align_heads:
                raise ValueError(f"no alignment head for embodiment {emb!r} (heads: {self.align_heads or 'none'}; "
                                 "vae.align_head: linear builds one per embodiment with action statistics)")
            index[i] = self.align_heads.index(emb)
        if not self.align_heads:
            return torch.zeros_like(mu)
        index = index.to(mu.device)
        pred = torch.einsum("bij,bj->bi", self.align_weight[index], mu) + self.align_bias[index]
        return pred * use.to(mu.device, mu.dtype)[:, None]

    def describe(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "params": sum(p.numel() for p in self.parameters()),
                "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
                "token_shape": list(self.token_shape), "align_heads": list(self.align_heads)}
