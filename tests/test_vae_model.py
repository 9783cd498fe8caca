"""The VAE model's shapes and the frozen-pretrained DC-AE path (loaded from a local folder, never downloaded)."""

import torch

from latent_action_vae.model import LatentActionVAE, build_dcae
from latent_action_vae.config import VAEConfig

SMALL = dict(image_size=32, widths=[8, 16, 32, 64, 128], latent_channels=64, hidden=32)


def test_flow_and_colour_inputs_reconstruct_two_channel_flow():
    flow = torch.randn(3, 2, 96, 80) * 4
    valid = torch.ones(3, 96, 80, dtype=torch.bool)
    for mode, channels in (("flow", 2), ("colour", 3)):
        model = LatentActionVAE(VAEConfig(input=mode, **SMALL))
        x, target, mask = model.prepare(flow, valid)
        out = model(x)
        assert x.shape == (3, channels, 32, 32) and target.shape == (3, 2, 32, 32) and mask.shape == (3, 32, 32)
        assert out["mu"].shape == (3, 14) and out["recon"].shape == (3, 2, 32, 32)
        assert model.token_shape == (64, 2, 2)  # 32 / 2^4 = 2 → 4 tokens


def test_default_config_gives_four_tokens_of_512():
    model = LatentActionVAE(VAEConfig())
    assert model.token_shape == (512, 2, 2)


def test_pretrained_dcae_is_loaded_from_a_local_folder_and_frozen(tmp_path):
    donor = build_dcae(VAEConfig(**SMALL))
    donor.save_pretrained(tmp_path / "dcae")
    model = LatentActionVAE(VAEConfig(pretrained_dcae=str(tmp_path / "dcae"), **SMALL))
    for a, b in zip(donor.state_dict().values(), model.dcae.state_dict().values()):
        assert torch.equal(a, b)  # the weights on disk, not a fresh init
    assert not any(p.requires_grad for p in model.dcae.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("dcae.") for n in trainable)


def test_frame_conditioned_decoder_reads_the_frame_and_z_and_says_when_frames_are_missing():
    import pytest

    from pipelines.config import ConfigError, load_config

    model = LatentActionVAE(VAEConfig(decoder_condition="frame", **SMALL)).eval()
    flow = torch.randn(2, 2, 96, 80)
    x, _, _ = model.prepare(flow, torch.ones(2, 96, 80, dtype=torch.bool))
    frames = torch.randint(0, 256, (2, 3, 96, 80), dtype=torch.uint8)
    frame = model.prepare_frame(frames)
    assert frame.shape == (2, 3, 32, 32) and -1 <= frame.min() and frame.max() <= 1
    with torch.no_grad():
        out = model(x, sample=False, frame=frame)
        assert out["recon"].shape == (2, 2, 32, 32)
        other_frame = model.decode(out["z"], model.prepare_frame(255 - frames))
        other_z = model.decode(out["z"] + 1.0, frame)
    assert not torch.allclose(other_frame, out["recon"]) and not torch.allclose(other_z, out["recon"])
    with pytest.raises(ValueError, match="store_frames"):
        model.prepare_frame(None)
    with pytest.raises(ConfigError, match="store_frames"):
        load_config(None, **{"vae.decoder_condition": "frame", "flow.store_frames": False})
    with pytest.raises(ConfigError, match="decoder_condition"):
        load_config(None, **{"vae.decoder_condition": "image"})
