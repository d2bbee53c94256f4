"""Backbones that are open_clip models: BERT text towers (``CustomTextCLIP``: BiomedCLIP, PMC-CLIP,
tiny-bert) and CLIP text transformers (``CLIP``: OpenAI CLIP, PubMedCLIP, tiny-clip)."""
import json
import tempfile
from pathlib import Path

import torch

from .base import ClipBackbone
from .preprocess import ImageSpec
from .tiny import register_tiny_image_towers
from .tokenizers import build_tokenizer


def _open_clip():
    import open_clip

    register_tiny_image_towers()  # configs may name the tiny timm tower; timm must know it first
    return open_clip


class OpenClipBertBackbone(ClipBackbone):
    """open_clip ``CustomTextCLIP`` with a Hugging Face BERT text tower.

    Learned context enters through ``inputs_embeds`` plus the attention mask; BERT's embedding
    layer then adds positions and token types exactly as it does for token ids."""

    family = "bert"

    @classmethod
    def build(cls, name, config, vocab_file=None):
        open_clip = _open_clip()
        model_cfg = config["model_cfg"]
        bert_config = config["hf_text_config"]
        with tempfile.TemporaryDirectory() as bert_dir:
            # HFTextEncoder reads the BERT architecture with AutoConfig.from_pretrained(dir): give it
            # the bundled config so nothing is fetched from the hub.
            Path(bert_dir, "config.json").write_text(json.dumps(bert_config))
            text_cfg = dict(model_cfg["text_cfg"], hf_model_name=bert_dir, hf_model_pretrained=False)
            model = open_clip.CustomTextCLIP(**dict(model_cfg, text_cfg=text_cfg))
        tokenizer = build_tokenizer(config["tokenizer"], model_cfg["text_cfg"]["context_length"],
                                    vocab_size=bert_config["vocab_size"], vocab_file=vocab_file)
        return cls(name, model, tokenizer, ImageSpec.from_config(config["preprocess_cfg"]),
                   joint_dim=model_cfg["embed_dim"], ctx_dim=bert_config["hidden_size"])

    def token_embedding_layer(self):
        return self.model.text.transformer.embeddings.word_embeddings

    def _bert_features(self, mask, **inputs):
        text = self.model.text
        hidden = text.transformer(attention_mask=mask, **inputs)
        return text.proj(text.pooler(hidden, mask))

    def _encode_ids(self, ids, mask):
        return self._bert_features(mask, input_ids=ids)

    def _encode_embeds(self, embeds, mask):
        return self._bert_features(mask, inputs_embeds=embeds)


class OpenClipNativeBackbone(ClipBackbone):
    """open_clip ``CLIP`` with OpenAI's causal text transformer.

    The forward is written out so it runs at any length up to the context: positions and the
    causal mask are sliced to ``L`` and features are taken at the last real token (<end_of_text>),
    found from the mask rather than from the ids, which learned context may replace."""

    family = "clip"

    @classmethod
    def build(cls, name, config, vocab_file=None):
        open_clip = _open_clip()
        model_cfg = config["model_cfg"]
        model = open_clip.CLIP(**model_cfg)
        text_cfg = model_cfg["text_cfg"]
        tokenizer = build_tokenizer(config["tokenizer"], text_cfg["context_length"])
        return cls(name, model, tokenizer, ImageSpec.from_config(config["preprocess_cfg"]),
                   joint_dim=model_cfg["embed_dim"], ctx_dim=text_cfg["width"])

    def token_embedding_layer(self):
        return self.model.token_embedding

    def _encode_ids(self, ids, mask):
        return self._encode_embeds(self.model.token_embedding(ids), mask)

    def _encode_embeds(self, embeds, mask):
        model = self.model
        length = embeds.shape[1]
        x = embeds + model.positional_embedding[:length].to(embeds.dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        last_real = mask.sum(1) - 1
        pooled = x[torch.arange(x.shape[0], device=x.device), last_real]
        projection = model.text_projection
        return projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
