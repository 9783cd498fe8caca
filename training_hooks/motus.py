"""A compact Motus: three experts (video, action, understanding) joined by one joint attention per layer, trained with
rectified flow on per-modality timesteps, sampled in five modes. The model: docs/trainer.md ("The model")."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training_hooks.motus_config import MODES, MotusConfig, shares_vector
from training_hooks.motus_layers import ActionEncoder, Decoder, JointLayer, TimeEmbed, rotary, sincos


# --- the model ----------------------------------------------------------------------------------------------
class Motus(nn.Module):
    def __init__(self, cfg: MotusConfig):
        super().__init__()
        self.cfg = cfg
        gh, gw = cfg.grid
        n_patches = gh * gw
        # video expert: patch embedding, factorised learned positions (frame, row, col), time, decoder
        self.video_encoder = nn.Linear(cfg.patch_dim, cfg.d_video)
        self.motion_encoder = nn.Linear(cfg.patch_dim, cfg.d_video) if cfg.motion_input else None
        # positions at a scale comparable to the patch embedding's output (~0.3-0.5): from 0.02 they stayed too
        # small to tell frames apart after 1,000 steps (research latent_actions.md §5)
        std = cfg.pos_init_std
        self.pos_frame = nn.Parameter(torch.randn(1 + cfg.num_video_frames, 1, 1, cfg.d_video) * std)
        self.pos_row = nn.Parameter(torch.randn(1, gh, 1, cfg.d_video) * std)
        self.pos_col = nn.Parameter(torch.randn(1, 1, gw, cfg.d_video) * std)
        self.video_time = TimeEmbed(cfg.d_video)
        self.video_decoder = Decoder(cfg.d_video, cfg.patch_dim)
        # time group of each video token: 0 = condition frame (always t=0), 1 = predicted frames (t_video)
        groups = torch.cat([torch.zeros(n_patches), torch.ones(cfg.num_video_frames * n_patches)]).long()
        self.register_buffer("video_groups", groups, persistent=False)
        # action expert: input encoder, time, decoder (positions are fixed sin-cos)
        self.action_encoder = ActionEncoder(cfg.action_dim, cfg.state_dim, cfg.n_registers, cfg.d_action)
        self.action_time = TimeEmbed(cfg.d_action)
        self.action_decoder = Decoder(cfg.d_action, cfg.action_dim)
        # understanding expert: language tokens in, no decoder
        self.und_encoder = nn.Linear(cfg.text_dim, cfg.d_und)
        self.layers = nn.ModuleList(JointLayer(cfg, last=i == cfg.n_layers - 1) for i in range(cfg.n_layers))

    # --- video pixels <-> patches -------------------------------------------------------------------------
    def frames_to_patches(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] in [0, 1] (any H×W) → [B, T, patches, 3·p²] in [−1, 1] at the working resolution."""
        B, T = frames.shape[:2]
        p, (gh, gw) = self.cfg.patch_size, self.cfg.grid
        x = F.interpolate(frames.flatten(0, 1).float(), size=tuple(self.cfg.work_size), mode="area") * 2 - 1
        x = x.reshape(B * T, 3, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, T, gh * gw, self.cfg.patch_dim)

    def patches_to_frames(self, patches: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Inverse of `frames_to_patches`: [B, T, 3, h, w] in [0, 1], bilinearly upsampled to `size` if given."""
        B, T = patches.shape[:2]
        p, (gh, gw) = self.cfg.patch_size, self.cfg.grid
        x = patches.reshape(B * T, gh, gw, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B * T, 3, gh * p, gw * p)
        x = ((x + 1) / 2).clamp(0, 1)
        if size is not None and tuple(size) != tuple(self.cfg.work_size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
        return x.reshape(B, T, *x.shape[1:])

    # --- the network --------------------------------------------------------------------------------------
    def velocity(self, cond: torch.Tensor, video_x: torch.Tensor, t_video: torch.Tensor, action_x: torch.Tensor,
                 t_action: torch.Tensor, language: torch.Tensor | None = None,
                 language_mask: torch.Tensor | None = None, state: torch.Tensor | None = None):
        """Predicted velocities (ε − x0) for the video patches [B, F, P, 3p²] and the actions [B, A, D].

        cond: clean condition-frame patches [B, P, 3p²]; video_x / action_x: the noisy inputs at t_video / t_action
        [B]; language [B, L, E] with language_mask [B, L] (True on real tokens; None: all real), or None for none.
        """
        cfg = self.cfg
        B, n_frames, n_patches, _ = video_x.shape
        frames = torch.cat([cond[:, None], video_x], dim=1)
        xv = self.video_encoder(frames)
        if self.motion_encoder is not None:  # each patch's change from the previous frame; none at the condition
            xv = xv + self.motion_encoder(torch.cat([torch.zeros_like(frames[:, :1]), frames.diff(dim=1)], dim=1))
        pos = (self.pos_frame + self.pos_row + self.pos_col).flatten(1, 2)  # [1+F, P, d]
        xv = (xv + pos).flatten(1, 2)
        cond_v = F.silu(self.video_time(torch.stack([torch.zeros_like(t_video), t_video], dim=1)))  # [B, 2, d]

        xa, first_action = self.action_encoder(action_x, state)
        xa = xa + sincos(torch.arange(xa.shape[1], device=xa.device), cfg.d_action)
        cond_a = F.silu(self.action_time(t_action))[:, None]  # [B, 1, d]

        xu, key_mask = None, None
        if language is not None:
            xu = self.und_encoder(language)
            if language_mask is not None:  # padding tokens are never keys; video/action keys always are
                key_mask = torch.cat([language_mask.new_ones(B, xv.shape[1] + xa.shape[1]), language_mask.bool()], 1)
                key_mask = key_mask[:, None, None]
        rope = None
        if cfg.rope_dims:
            rope = rotary(self.token_times(n_frames, n_patches, xa.shape[1], first_action, action_x.shape[1],
                                           xv.device), cfg.rope_dims)
        for layer in self.layers:
            xv, xa, xu = layer(xv, xa, xu, cond_v, self.video_groups, cond_a, key_mask, rope)
        v_video = self.video_decoder(xv[:, n_patches:], cond_v[:, 1:2]).view(B, n_frames, n_patches, -1)
        v_action = self.action_decoder(xa[:, first_action:first_action + action_x.shape[1]], cond_a)
        return v_video, v_action

    def token_times(self, n_frames: int, n_patches: int, n_action_tokens: int, first_action: int, n_actions: int,
                    device: torch.device) -> torch.Tensor:
        """Time (in frames) of every video and action token: frame f's patches at f (0 = condition frame), action
        k at (k + action_time) / action_ratio, the state token and registers at 0 (the condition frame)."""
        video = torch.arange(1 + n_frames, device=device).float().repeat_interleave(n_patches)
        action = torch.zeros(n_action_tokens, device=device)
        ratio = n_actions / n_frames
        steps = torch.arange(n_actions, device=device) + self.cfg.action_time
        action[first_action:first_action + n_actions] = steps / ratio
        return torch.cat([video, action])

    def sample_modes(self, n: int, generator: torch.Generator | None = None,
                     mode_shares: dict[str, float] | None = None):
        """Per sample a training mode (index into MODES, drawn with `mode_shares`, default cfg.mode_shares) and
        its (t_video, t_action)."""
        shares = self.cfg.shares if mode_shares is None else shares_vector(mode_shares)
        mode = torch.multinomial(torch.tensor(shares), n, replacement=True, generator=generator)
        t_v, t_a = self.sample_t(n, generator), self.sample_t(n, generator)
        idm, vla, wm, vgm = (mode == MODES.index(m) for m in ("idm", "vla", "wm", "vgm"))
        t_v = torch.where(idm, 0.0, torch.where(vla, 1.0, t_v))
        t_a = torch.where(wm, 0.0, torch.where(vgm, 1.0, t_a))
        return mode, t_v, t_a

    def sample_t(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.cfg.time_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(n, generator=generator))
        return torch.rand(n, generator=generator)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                mode_shares: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
        """Rectified-flow training losses on a Motus batch: per sample a mode (`mode_shares`, default
        cfg.mode_shares; the trainer passes its `mode_shares_schedule`'s entry for the step) fixes or draws
        t_video and t_action, x_t = (1 − t)·x0 + t·ε, target ε − x0; MSE on the F predicted frames and on the
        actions, leaving out a modality given clean (its velocity at t=0 is unpredictable noise). Also returns
        `mode_counts` [len(MODES)], the samples drawn per mode."""
        self.check_batch(batch)
        cfg = self.cfg
        device = batch["first_frame"].device
        cond = self.frames_to_patches(batch["first_frame"][:, None])[:, 0]
        x0_v = self.frames_to_patches(batch["video_frames"])
        x0_a = batch["action_sequence"].float()
        B = x0_v.shape[0]
        mode, t_v, t_a = self.sample_modes(B, generator, mode_shares)
        t_v, t_a = t_v.to(device), t_a.to(device)
        eps_v = torch.randn(x0_v.shape, generator=generator).to(device)
        eps_a = torch.randn(x0_a.shape, generator=generator).to(device)
        xt_v = (1 - t_v[:, None, None, None]) * x0_v + t_v[:, None, None, None] * eps_v
        xt_a = (1 - t_a[:, None, None]) * x0_a + t_a[:, None, None] * eps_a
        v_v, v_a = self.velocity(cond, xt_v, t_v, xt_a, t_a, batch["language_embedding"].float(),
                                 batch["language_mask"], batch.get("initial_state"))
        # weights multiply rather than index, so every parameter keeps a (possibly zero) gradient, as DDP needs
        w_v = (mode != MODES.index("idm")).float().to(device)
        w_a = (mode != MODES.index("wm")).float().to(device)
        loss_video = ((v_v - (eps_v - x0_v)) ** 2).mean(dim=(1, 2, 3)).mul(w_v).sum() / w_v.sum().clamp(min=1)
        loss_action = ((v_a - (eps_a - x0_a)) ** 2).mean(dim=(1, 2)).mul(w_a).sum() / w_a.sum().clamp(min=1)
        loss = cfg.video_loss_weight * loss_video + cfg.action_loss_weight * loss_action
        return {"loss": loss, "loss_video": loss_video, "loss_action": loss_action,
                "mode_counts": torch.bincount(mode, minlength=len(MODES)).float()}

    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        cfg = self.cfg
        missing = [k for k in ("first_frame", "video_frames", "action_sequence", "language_embedding",
                               "language_mask") if k not in batch]
        if missing:
            raise ValueError(f"batch lacks {missing}")
        expect = {"video_frames": (cfg.num_video_frames, 3), "action_sequence": (cfg.num_actions, cfg.action_dim)}
        for key, dims in expect.items():
            if tuple(batch[key].shape[1:3]) != dims:
                raise ValueError(f"batch {key} has shape {list(batch[key].shape)}; the model expects [B, "
                                 f"{', '.join(map(str, dims))}, ...] (model.num_video_frames / action_ratio / "
                                 "action_dim)")
        if batch["language_embedding"].shape[-1] != cfg.text_dim:
            raise ValueError(f"batch language_embedding is {batch['language_embedding'].shape[-1]}-d; "
                             f"model.text_dim is {cfg.text_dim}")
        self._check_state(batch.get("initial_state"))

    def _check_state(self, state: torch.Tensor | None) -> None:
        if self.cfg.state_dim and (state is None or state.shape[-1] != self.cfg.state_dim):
            got = "none" if state is None else f"{state.shape[-1]}-d"
            raise ValueError(f"this model takes a {self.cfg.state_dim}-d initial_state (model.state_dim); got {got}")

    # --- sampling: the five modes -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, first_frame: torch.Tensor, video: torch.Tensor | str = "denoise",
               actions: torch.Tensor | str = "denoise", language: torch.Tensor | None = None,
               language_mask: torch.Tensor | None = None, state: torch.Tensor | None = None, num_steps: int = 10,
               generator: torch.Generator | None = None, full_size: bool = True):
        """Euler integration from t=1 to t=0 with each modality in one role: a tensor (given clean, t=0),
        "noise" (pure noise held at t=1, i.e. not generated) or "denoise" (integrated, sharing t with the other
        modality if it is denoised too). Returns (video [B, F, 3, H, W] in [0, 1] or None, actions [B, A, D] or
        None); video is generated at work_size and bilinearly upsampled to first_frame's H×W unless full_size
        is False. `generator` makes the noise reproducible."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self._check_state(state)
        cfg = self.cfg
        device = first_frame.device
        B = first_frame.shape[0]
        cond = self.frames_to_patches(first_frame[:, None])[:, 0]
        n_patches = cond.shape[1]

        def start(role, shape, given):
            if isinstance(role, torch.Tensor):
                return given(role), 0.0
            if role not in ("noise", "denoise"):
                raise ValueError(f"a modality's role is a tensor, 'noise' or 'denoise', got {role!r}")
            return torch.randn(shape, generator=generator).to(device), 1.0

        xv, tv = start(video, (B, cfg.num_video_frames, n_patches, cfg.patch_dim), self.frames_to_patches)
        xa, ta = start(actions, (B, cfg.num_actions, cfg.action_dim), lambda a: a.float())
        denoise_v = isinstance(video, str) and video == "denoise"
        denoise_a = isinstance(actions, str) and actions == "denoise"
        for i in range(num_steps):
            t, t_next = 1 - i / num_steps, 1 - (i + 1) / num_steps
            tv, ta = (t if denoise_v else tv), (t if denoise_a else ta)
            v_v, v_a = self.velocity(cond, xv, torch.full((B,), tv, device=device), xa,
                                     torch.full((B,), ta, device=device), language, language_mask, state)
            if denoise_v:
                xv = xv + (t_next - t) * v_v
            if denoise_a:
                xa = xa + (t_next - t) * v_a
        out_video = self.patches_to_frames(xv, first_frame.shape[-2:] if full_size else None) if denoise_v else None
        return out_video, (xa if denoise_a else None)

    def vla(self, first_frame, language, language_mask=None, state=None, num_steps=10, generator=None):
        """Vision-language-action: actions [B, A, D] from the condition frame and language; the future frames
        are held as pure noise at t=1 (the state training sees whenever t_video = 1), never generated."""
        return self.sample(first_frame, "noise", "denoise", language, language_mask, state, num_steps, generator)[1]

    def wm(self, first_frame, actions, language=None, language_mask=None, state=None, num_steps=10,
           generator=None, full_size=True):
        """World model: video [B, F, 3, H, W] in [0, 1] from the condition frame and clean actions (t=0)."""
        return self.sample(first_frame, "denoise", actions, language, language_mask, state, num_steps, generator,
                           full_size)[0]

    def idm(self, first_frame, video_frames, language=None, language_mask=None, state=None, num_steps=10,
            generator=None):
        """Inverse dynamics: actions [B, A, D] from the condition frame and clean video frames (t=0)."""
        return self.sample(first_frame, video_frames, "denoise", language, language_mask, state, num_steps,
                           generator)[1]

    def vgm(self, first_frame, language, language_mask=None, state=None, num_steps=10, generator=None,
            full_size=True):
        """Video generation: video [B, F, 3, H, W] in [0, 1]; actions held as noise at t=1."""
        return self.sample(first_frame, "denoise", "noise", language, language_mask, state, num_steps, generator,
                           full_size)[0]

    def joint(self, first_frame, language, language_mask=None, state=None, num_steps=10, generator=None,
              full_size=True):
        """Joint prediction: (video, actions), both denoised with the same t (Motus's released inference)."""
        return self.sample(first_frame, "denoise", "denoise", language, language_mask, state, num_steps, generator,
                           full_size)

    # --- stage 2 → stage 3 --------------------------------------------------------------------------------
    def swap_action_head(self, action_dim: int, state_dim: int, n_registers: int,
                         action_ratio: int | None = None, action_time: float | None = None) -> None:
        """New action input encoder and decoder for stage 3 (real actions, a state token, registers), keeping
        every shared weight: video and understanding experts, the action expert's joint layers and time
        embedding — as Motus skips `action_expert.input_encoder.*` and `decoder.*` when it loads the stage-2
        checkpoint for fine-tuning. `action_ratio` may change A too (positions are computed per length), and
        `action_time` where the actions sit between frames (1.0 for real actions reached at the next frame)."""
        ratio = self.cfg.action_ratio if action_ratio is None else action_ratio
        when = self.cfg.action_time if action_time is None else action_time
        self.cfg = dataclasses.replace(self.cfg, action_dim=action_dim, state_dim=state_dim,
                                       n_registers=n_registers, action_ratio=ratio, action_time=when)
        device = self.video_encoder.weight.device
        self.action_encoder = ActionEncoder(action_dim, state_dim, n_registers, self.cfg.d_action).to(device)
        self.action_decoder = Decoder(self.cfg.d_action, action_dim).to(device)

    def describe(self) -> dict[str, Any]:
        params = {"video": 0, "action": 0, "und": 0}
        for name, p in self.named_parameters():
            expert = next((e for e in ("action", "und") if name.startswith(e) or f".{e}." in name), "video")
            params[expert] += p.numel()
        return {"config": dataclasses.asdict(self.cfg), "params": sum(params.values()), "params_by_expert": params,
                "tokens": {"video": (1 + self.cfg.num_video_frames) * self.cfg.grid[0] * self.cfg.grid[1],
                           "action": self.cfg.num_actions + (self.cfg.state_dim > 0) + self.cfg.n_registers}}
