"""The VAE section of the pipeline config: model shape, objective, training run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class VAEConfig:
    """The DC-AE latent-action VAE: flow (64×64) → DC-AE encoder → 4 tokens × 512 → 14-d Gaussian → back."""

    input: str = "flow"  # flow: 2-channel raw flow | colour: 3-channel fixed-radius colour-wheel image
    image_size: int = 64  # flow is resized to image_size² (vectors stay in working-canvas pixels)
    flow_scale_px: float = 10.0  # network units = flow / flow_scale_px (also the colour radius)
    widths: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128, 512])  # DC-AE stages (64/2^5 = 2 → 2×2 tokens)
    latent_channels: int = 512  # token width
    latent_dim: int = 14
    hidden: int = 512  # the light encoder/decoder between tokens and the 14-d latent
    decoder_condition: str = "none"  # none: z alone → DC-AE decoder | frame: a U-Net on the pair's first frame,
    #   modulated by z (the encoder is the same; see latent_action_vae/frame_decoder.py)
    pretrained_dcae: str | None = None  # local folder of a diffusers AutoencoderDC (e.g. dc-ae-f128c512); frozen
    beta: float = 1e-4  # KL weight
    recon_balance: str = "per_source"  # none | per_source: each source's pairs weigh 1 / (its train mean |flow|)², so
    #   sparse robot motion counts as much as big human-video flow (research latent_actions.md §4)
    recon_floor_px: float = 0.05  # per_source: mean |flow| below this counts as this (near-static sources)
    recon_loss: str = "squared"  # squared: squared error (Gaussian) | epe: per-pixel end-point error (Charbonnier),
    #   whose best guess under doubt is the median (zero flow for sparse motion), not a smear of the mean
    coarse_weight: float = 0.0  # > 0: a linear head reads the coarse_cells² pooled flow from z, weighted like the
    #   reconstruction, so z must hold the coarse motion linearly (what a linear read of the action needs)
    coarse_cells: int = 8
    coarse_skip: bool = False  # μ also gets a linear read of the input's coarse_cells² pooled flow (in px), beside
    #   the DC-AE path, so a linear code of the coarse motion (what PCA keeps) is reachable from the first step
    coarse_residual: bool = False  # the decoder's flow = the coarse head's g×g flow, bilinearly upsampled, + a gated
    #   DC-AE decode (gate from 0, ReZero-style): the way back starts linear (as PCA's) and the DC-AE adds detail
    coarse_mask: str = "none"  # none | frame (with coarse_residual): the upsampled coarse flow is multiplied per pixel
    #   by 2·sigmoid(a small U-Net on the pair's first frame, modulated by z), starting at exactly 1, so the decoder
    #   can keep the coarse motion on the movers it sees and off the still background around them
    coarse_skip_init: str = "random"  # random | pca: the skip starts as the whitened top-k principal components of
    #   the train pairs' pooled flow and the DC-AE path's share of μ at zero, so μ starts as PCA-k; with
    #   coarse_weight > 0 the coarse head starts as PCA's inverse (latent_action_vae/pca_init.py)
    moving_weight: float = 1.0  # pixels whose true |flow| > moving_px weigh this much more in reconstruction
    moving_px: float = 0.5
    lambda_align: float = 5.0  # weight of aligning μ with real normalised action changes
    align_head: str = "identity"  # identity: μ[:d] ≈ the embodiment's d-dim action change | linear: a linear head
    #   per aligned embodiment, action change ≈ W_e μ + b_e (LAOM), trained jointly, its gradient into the encoder
    align_head_lr: float = 1.0  # the linear heads learn at lr × this (they see only the labelled share of a batch)
    labelled_fraction: float = 0.1  # share of each batch drawn from labelled pairs
    align_embodiments: list[str] = field(default_factory=list)  # embodiments whose actions align μ ([]: all)
    tier_weights: dict[str, float] = field(default_factory=dict)  # {"1": w, ...}; missing tiers weigh 1
    batch_size: int = 32
    steps: int = 600
    lr: float = 3e-4
    lr_decay_steps: int = 600  # > 0: cosine decay of lr to 10% over this many steps (0: constant after warmup)
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int = 2  # torch threads for training (the only process running)
    eval_max_pairs: int = 4000
    cache_items: int = 256  # flow artifacts the pair sampler keeps in memory (~2-3 MB each at the demo's sizes);
    #   random batches over more items than this reread artifacts from disk every step
    exclude_flagged: bool = True  # leave audit-flagged items (duplicates, static clips) out of training and eval
    output: str = "vae"  # relative to workdir: checkpoints, metrics.csv, eval.json, pictures
