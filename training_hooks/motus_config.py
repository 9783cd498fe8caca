"""The compact Motus's configuration (`model:` in a trainer config) and its training modes; docs/trainer.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TIME_SAMPLINGS = ("uniform", "logit_normal")
# training modes, each a (t_video, t_action) setting: joint draws both; idm gives the video clean (t=0); vla holds
# it at pure noise (t=1); wm gives the actions clean; vgm holds them at pure noise
MODES = ("joint", "idm", "vla", "wm", "vgm")


@dataclass
class MotusConfig:
    # inputs (the Motus batch contract)
    num_video_frames: int = 8  # F predicted frames after the condition frame
    action_ratio: int = 1  # A = F × action_ratio action tokens
    action_dim: int = 14  # latent actions in stage 2, robot actions in stage 3
    state_dim: int = 0  # > 0 adds a state token from `initial_state` (stage 3)
    n_registers: int = 0  # learnable extra action-expert tokens (Motus fine-tuning uses 4)
    text_dim: int = 384  # language-embedding width (all-MiniLM-L6-v2)
    # video tokens: any input H×W is area-pooled to work_size, then patchified
    work_size: list[int] = field(default_factory=lambda: [48, 40])  # H, W
    patch_size: int = 8
    # video tokens also embed their patch's change from the previous frame (frame f − frame f−1, 0 for the
    # condition frame) through their own linear map: motion visible to the first layer (docs/trainer.md)
    motion_input: bool = False
    # transformer
    n_layers: int = 3
    n_heads: int = 4
    head_dim: int = 32  # the shared head space is n_heads × head_dim wide
    d_video: int = 128
    d_action: int = 64
    d_und: int = 64
    ffn_mult: int = 4
    # rectified flow
    time_sampling: str = "uniform"  # uniform | logit_normal (t = sigmoid(N(0, 1)))
    # share of training samples per mode (normalised; missing modes get 0): see MODES. IDM-heavy: on the
    # controlled case it halved the steps the IDM needs against a quarter each (docs/trainer.md)
    mode_shares: dict[str, float] = field(default_factory=lambda: {"joint": 0.2, "idm": 0.4, "vla": 0.2, "wm": 0.2})
    video_loss_weight: float = 1.0
    action_loss_weight: float = 1.0
    # positions: rotary time on rope_dims of each head (0: none); action k sits at frame time
    # (k + action_time) / action_ratio: 0.5 for latent row k (the motion from frame k to k+1), 1.0 for real actions
    # (the action reached at the next frame); learned video (frame, row, col) positions start at pos_init_std
    rope_dims: int = 16
    action_time: float = 0.5
    pos_init_std: float = 0.5

    def __post_init__(self) -> None:
        positive = ("num_video_frames", "action_ratio", "action_dim", "text_dim", "patch_size", "n_layers",
                    "n_heads", "head_dim", "d_video", "d_action", "d_und", "ffn_mult")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("state_dim", "n_registers", "video_loss_weight", "action_loss_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.{key} must be >= 0, got {getattr(self, key)}")
        if len(self.work_size) != 2 or any(s < 1 or s % self.patch_size for s in self.work_size):
            raise ValueError(f"model.work_size must be [H, W], each a positive multiple of model.patch_size "
                             f"({self.patch_size}), got {self.work_size}")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"model.time_sampling: {self.time_sampling!r} is not one of {', '.join(TIME_SAMPLINGS)}")
        check_mode_shares(self.mode_shares, "model.mode_shares")
        if self.rope_dims < 0 or self.rope_dims % 2 or self.rope_dims > self.head_dim:
            raise ValueError(f"model.rope_dims must be even and in [0, head_dim={self.head_dim}], got {self.rope_dims}")
        if self.pos_init_std < 0:
            raise ValueError(f"model.pos_init_std must be >= 0, got {self.pos_init_std}")

    @property
    def num_actions(self) -> int:
        return self.num_video_frames * self.action_ratio

    @property
    def grid(self) -> tuple[int, int]:
        return self.work_size[0] // self.patch_size, self.work_size[1] // self.patch_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size ** 2

    @property
    def shares(self) -> list[float]:
        """Normalised mode shares in MODES order."""
        return shares_vector(self.mode_shares)


def check_mode_shares(shares: Any, where: str) -> None:
    """A ValueError naming `where` unless `shares` maps known modes to numbers >= 0 with a positive sum."""
    if not isinstance(shares, dict):
        raise ValueError(f"{where} must be a mapping of mode to share ({', '.join(MODES)}), got {shares!r}")
    unknown = sorted(set(shares) - set(MODES), key=str)
    if unknown:
        raise ValueError(f"{where}: unknown mode(s) {unknown}; modes are {', '.join(MODES)}")
    values = shares.values()
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"{where} must be >= 0 with a positive sum, got {shares}")


def shares_vector(shares: dict[str, float]) -> list[float]:
    """Mode shares normalised to sum 1, in MODES order (missing modes: 0)."""
    total = sum(shares.values())
    return [shares.get(m, 0.0) / total for m in MODES]
