"""The compact Motus model: the five sampling modes, joint attention across experts, the stage-2 → stage-3
action-head swap, and the rectified-flow losses."""

from __future__ import annotations

import pytest
import torch

from training_hooks.motus import Motus
from training_hooks.motus_config import MODES, MotusConfig
from training_hooks.motus_layers import apply_rotary, rotary

torch.set_num_threads(1)

H, W, L = 48, 40, 6
TINY = dict(work_size=[24, 20], patch_size=4, n_layers=2, n_heads=2, head_dim=16, d_video=32, d_action=32, d_und=32,
            text_dim=16, num_video_frames=4, action_dim=6)


def make_batch(cfg: MotusConfig, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch_size, L, dtype=torch.bool)
    for i in range(batch_size):
        mask[i, :L - i] = True
    batch = {
        "first_frame": torch.rand(batch_size, 3, H, W, generator=g),
        "video_frames": torch.rand(batch_size, cfg.num_video_frames, 3, H, W, generator=g),
        "action_sequence": torch.randn(batch_size, cfg.num_actions, cfg.action_dim, generator=g),
        "language_embedding": torch.randn(batch_size, L, cfg.text_dim, generator=g) * mask[..., None],
        "language_mask": mask,
    }
    if cfg.state_dim:
        batch["initial_state"] = torch.randn(batch_size, cfg.state_dim, generator=g)
    return batch


def trained_like(model: Motus) -> Motus:
    """Perturb every weight: the zero-initialised AdaLN and heads of a fresh model would hide the experts'
    influence on each other (a fresh model predicts zero velocity whatever it sees)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> Motus:
    torch.manual_seed(0)
    return trained_like(Motus(MotusConfig(**TINY)))


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def test_five_modes_shapes_and_ranges(model):
    cfg, b = model.cfg, make_batch(model.cfg)
    lang = dict(language=b["language_embedding"], language_mask=b["language_mask"], num_steps=3)
    video_shape = (2, cfg.num_video_frames, 3, H, W)
    action_shape = (2, cfg.num_actions, cfg.action_dim)
    outputs = {
        "vla": (model.vla(b["first_frame"], **lang), action_shape),
        "wm": (model.wm(b["first_frame"], b["action_sequence"], **lang), video_shape),
        "idm": (model.idm(b["first_frame"], b["video_frames"], num_steps=3), action_shape),
        "vgm": (model.vgm(b["first_frame"], **lang), video_shape),
    }
    joint_video, joint_actions = model.joint(b["first_frame"], **lang)
    outputs["joint video"] = (joint_video, video_shape)
    outputs["joint actions"] = (joint_actions, action_shape)
    for name, (out, shape) in outputs.items():
        assert tuple(out.shape) == shape, name
        assert out.dtype == torch.float32, name
        assert torch.isfinite(out).all(), name
        if out.dim() == 5:
            assert 0 <= out.min() and out.max() <= 1, name
    small = model.wm(b["first_frame"], b["action_sequence"], num_steps=2, full_size=False)
    assert tuple(small.shape[-2:]) == tuple(cfg.work_size)


def test_sampling_is_reproducible_and_needs_steps(model):
    b = make_batch(model.cfg)
    a1 = model.vla(b["first_frame"], b["language_embedding"], b["language_mask"], num_steps=2, generator=seeded())
    a2 = model.vla(b["first_frame"], b["language_embedding"], b["language_mask"], num_steps=2, generator=seeded())
    assert torch.equal(a1, a2)
    with pytest.raises(ValueError, match="num_steps"):
        model.vla(b["first_frame"], None, num_steps=0)
    with pytest.raises(ValueError, match="role"):
        model.sample(b["first_frame"], video="clean")


def test_joint_attention_mixes_modalities(model):
    b = make_batch(model.cfg)
    ff, lang, mask = b["first_frame"], b["language_embedding"], b["language_mask"]

    def vla(language, language_mask=None):
        return model.vla(ff, language, language_mask, num_steps=3, generator=seeded())

    base = vla(lang, mask)
    # language reaches the action expert through the joint attention
    assert (vla(lang + 1.0, mask) - base).abs().max() > 1e-3
    # a fully padded language mask is the same as no language at all
    all_padded = torch.zeros_like(mask)
    torch.testing.assert_close(vla(lang, all_padded), vla(None), atol=1e-5, rtol=1e-5)
    # padding keys are excluded: changing the embeddings under the mask changes nothing
    noisy_padding = lang + 5.0 * (~mask)[..., None]
    torch.testing.assert_close(vla(noisy_padding, mask), base, atol=1e-5, rtol=1e-5)
    # the video reaches the actions (IDM), the actions reach the video (WM)
    frames, actions = b["video_frames"], b["action_sequence"]
    idm = [model.idm(ff, v, num_steps=3, generator=seeded()) for v in (frames, frames.flip(1))]
    assert (idm[0] - idm[1]).abs().max() > 1e-3
    wm = [model.wm(ff, a, num_steps=3, generator=seeded(), full_size=False) for a in (actions, -actions)]
    assert (wm[0] - wm[1]).abs().max() > 1e-4


def test_swap_action_head_keeps_shared_weights():
    torch.manual_seed(0)
    stage2 = Motus(MotusConfig(**TINY))
    before = {k: v.clone() for k, v in stage2.state_dict().items()}
    stage2.swap_action_head(action_dim=7, state_dim=5, n_registers=4, action_ratio=2)
    after = stage2.state_dict()
    swapped = ("action_encoder.", "action_decoder.")
    shared = [k for k in before if not k.startswith(swapped)]
    assert len(shared) > 50
    for k in shared:
        assert torch.equal(before[k], after[k]), k
    assert any(k.startswith("action_encoder.state.") for k in after)
    assert after["action_encoder.registers"].shape == (4, TINY["d_action"])
    assert after["action_decoder.head.weight"].shape == (7, TINY["d_action"])
    cfg = stage2.cfg
    assert (cfg.action_dim, cfg.state_dim, cfg.n_registers, cfg.num_actions) == (7, 5, 4, 8)
    # the stage-3 model trains and samples with a state
    b = make_batch(cfg)
    losses = stage2(b, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"])
    actions = stage2.vla(b["first_frame"], None, state=b["initial_state"], num_steps=2)
    assert actions.shape == (2, 8, 7)
    with pytest.raises(ValueError, match="initial_state"):
        stage2.vla(b["first_frame"], None, num_steps=2)


def test_losses_reach_every_parameter():
    """Every parameter gets a gradient from the training loss (DDP without find_unused_parameters needs it)."""
    torch.manual_seed(0)
    model = Motus(MotusConfig(**TINY, state_dim=3, n_registers=2))
    losses = model(make_batch(model.cfg), torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "loss_video", "loss_action", "mode_counts"}
    assert losses["mode_counts"].sum() == 2
    torch.testing.assert_close(losses["loss"], losses["loss_video"] + losses["loss_action"])
    losses["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    # a fresh model predicts zero velocity, so the loss is E[(ε − x0)²]: about 1 + E[x0²]
    assert 1.0 < losses["loss_action"].item() < 3.5


def test_logit_normal_times():
    model = Motus(MotusConfig(**{**TINY, "time_sampling": "logit_normal"}))
    t = model.sample_t(1000, torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.05 and t.std().item() < 0.25  # uniform would give ~0.29


def test_bad_config_and_batch_errors_name_the_key():
    with pytest.raises(ValueError, match="model.work_size"):
        MotusConfig(work_size=[30, 20], patch_size=8)
    with pytest.raises(ValueError, match="model.time_sampling"):
        MotusConfig(time_sampling="cosine")
    with pytest.raises(ValueError, match="model.n_heads"):
        MotusConfig(n_heads=0)
    model = Motus(MotusConfig(**TINY))
    batch = make_batch(model.cfg)
    batch["action_sequence"] = batch["action_sequence"][..., :4]
    with pytest.raises(ValueError, match="action_sequence"):
        model(batch)
    del batch["language_mask"]
    with pytest.raises(ValueError, match="language_mask"):
        model(batch)


def test_mode_shares_set_the_timesteps():
    """Each training mode comes up in its configured share, with its fixed t=0 / t=1 roles; a modality given
    clean (t=0) adds no loss, since its velocity target would be pure noise."""
    model = Motus(MotusConfig(**{**TINY, "mode_shares": {"idm": 0.5, "vla": 0.25, "wm": 0.25}}))
    mode, t_v, t_a = model.sample_modes(4000, torch.Generator().manual_seed(0))
    share = torch.bincount(mode, minlength=len(MODES)).float() / 4000
    expected = {"joint": 0.0, "idm": 0.5, "vla": 0.25, "wm": 0.25, "vgm": 0.0}
    for m, want in expected.items():
        assert abs(share[MODES.index(m)].item() - want) < 0.03, m
    idm, vla, wm = (mode == MODES.index(m) for m in ("idm", "vla", "wm"))
    assert (t_v[idm] == 0).all() and (t_v[vla] == 1).all() and (t_a[wm] == 0).all()
    assert 0 < t_a[idm].min() and t_a[idm].max() < 1 and 0 < t_v[wm].min() and t_v[wm].max() < 1
    # only IDM samples: the video loss has nothing to average; only WM samples: the action loss has nothing
    for shares, zero_key in (({"idm": 1.0}, "loss_video"), ({"wm": 1.0}, "loss_action")):
        only = Motus(MotusConfig(**{**TINY, "mode_shares": shares}))
        losses = only(make_batch(only.cfg), torch.Generator().manual_seed(0))
        assert losses[zero_key].item() == 0.0
        assert losses["loss"].item() > 0.5
    with pytest.raises(ValueError, match=r"model.mode_shares: unknown mode\(s\) \['idn'\]"):
        MotusConfig(mode_shares={"idn": 1.0})
    with pytest.raises(ValueError, match="model.mode_shares"):
        MotusConfig(mode_shares={"idm": 0.0})


def test_one_clock_for_frames_and_actions():
    """Video tokens sit at their frame index and action k at (k + action_time) / action_ratio on one time axis;
    the rotary attention score between two tokens depends only on their time difference."""
    cfg = MotusConfig(**{**TINY, "action_ratio": 2})
    model = Motus(cfg)
    P = cfg.grid[0] * cfg.grid[1]
    times = model.token_times(cfg.num_video_frames, P, cfg.num_actions, 0, cfg.num_actions, torch.device("cpu"))
    assert times.shape == ((1 + cfg.num_video_frames) * P + cfg.num_actions,)
    video = times[:-cfg.num_actions].view(1 + cfg.num_video_frames, P)
    assert torch.equal(video, torch.arange(5.0)[:, None].expand(5, P))
    torch.testing.assert_close(times[-cfg.num_actions:], (torch.arange(8) + 0.5) / 2)  # between frames 0 and 4
    # the score of a query at time a and a key at time b depends on a − b only, and only on the rotated channels
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(a: float, b: float) -> float:
        cq, sq = rotary(torch.tensor([a]), 8)
        ck, sk = rotary(torch.tensor([b]), 8)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum().item()

    assert abs(score(2.5, 2.0) - score(0.5, 0.0)) < 1e-5
    assert abs(score(2.5, 2.0) - score(2.5, 3.0)) > 1e-3  # the frame after is told from the frame before
    torch.testing.assert_close(apply_rotary(q, *rotary(torch.tensor([3.0]), 8))[..., 8:], q[..., 8:])
    with pytest.raises(ValueError, match="model.rope_dims"):
        MotusConfig(rope_dims=7)


def test_positions_start_at_a_usable_scale():
    """Video positions start at pos_init_std (0.5 by default), not 0.02: frames are told apart from step 0."""
    model = Motus(MotusConfig(**TINY))
    assert 0.35 < model.pos_frame.std().item() < 0.65
    old = Motus(MotusConfig(**{**TINY, "pos_init_std": 0.02}))
    assert old.pos_frame.std().item() < 0.05


def test_motion_input_embeds_frame_differences():
    """`motion_input` adds a map of each patch's change from the previous frame to the video tokens: off by default
    (no new weights, so earlier checkpoints load), trained by the loss when on, and with the content map silenced
    the IDM reads only the changes between frames (a brightness shift of every frame changes nothing)."""
    torch.manual_seed(0)
    plain = Motus(MotusConfig(**TINY))
    assert not any(k.startswith("motion_encoder") for k in plain.state_dict())
    torch.manual_seed(0)
    model = Motus(MotusConfig(**TINY, motion_input=True))
    assert model.state_dict()["motion_encoder.weight"].shape == (TINY["d_video"], model.cfg.patch_dim)
    losses = model(make_batch(model.cfg), torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model = trained_like(model)
    with torch.no_grad():
        model.video_encoder.weight.zero_()
        model.video_encoder.bias.zero_()
    b = make_batch(model.cfg)
    ff, frames = b["first_frame"] * 0.5, b["video_frames"] * 0.5

    def idm(first, video):
        return model.idm(first, video, num_steps=3, generator=seeded())

    base = idm(ff, frames)
    torch.testing.assert_close(idm(ff + 0.25, frames + 0.25), base, atol=1e-4, rtol=1e-4)
    moved = frames.clone()
    moved[:, 1] = moved[:, 1].roll(4, dims=-1)
    assert (idm(ff, moved) - base).abs().max() > 1e-3
