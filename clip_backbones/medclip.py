"""MedCLIP (ViT variant): a Swin-T image tower and a Bio_ClinicalBERT text tower, re-implemented.

The ``medclip`` package cannot be imported under transformers 5 and downloads at construction,
so this module rebuilds its small wrapper with the same module names, so MedCLIP's released
``pytorch_model.bin`` loads as is: ``vision_model.model.*`` (Hugging Face Swin),
``vision_model.projection_head.weight``, ``text_model.model.*`` (BERT with pooler),
``text_model.projection_head.weight`` and ``logit_scale``.

One deliberate difference: MedCLIP averages the hidden states of layers 1, 2 and 12 over all
positions, padding included, so its features depend on how far a batch was padded. Here the
average over positions uses the attention mask. That equals MedCLIP for an unpadded prompt and
makes every prompt's feature independent of its batch.
"""
import math

import torch
from torch import nn

from .base import ClipBackbone
from .preprocess import ImageSpec
from .tokenizers import build_tokenizer

# MedCLIP clamps its log-temperature to [0, ln 100] before use.
MAX_LOG_LOGIT_SCALE = math.log(100.0)
TEXT_LAYERS_AVERAGED = (1, 2, -1)  # indices into hidden_states (0 is the embedding output)


class ProjectedTower(nn.Module):
    """A Hugging Face encoder (``model``) followed by a bias-free linear ``projection_head``."""

    def __init__(self, model, in_dim, out_dim):
        super().__init__()
        self.model = model
        self.projection_head = nn.Linear(in_dim, out_dim, bias=False)


class MedClipModel(nn.Module):
    def __init__(self, vision_config, text_config, embed_dim, init_logit_scale):
        super().__init__()
        from transformers import BertConfig, BertModel, SwinConfig, SwinModel

        swin = SwinModel(SwinConfig(**vision_config))
        bert = BertModel(BertConfig(**text_config))
        self.vision_model = ProjectedTower(swin, swin.num_features, embed_dim)
        self.text_model = ProjectedTower(bert, bert.config.hidden_size, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def encode_image(self, images):
        pooled = self.vision_model.model(pixel_values=images).pooler_output
        return self.vision_model.projection_head(pooled)

    def encode_text_tokens(self, mask, **inputs):
        out = self.text_model.model(attention_mask=mask, output_hidden_states=True, **inputs)
        layers = torch.stack([out.hidden_states[i] for i in TEXT_LAYERS_AVERAGED]).mean(0)
        weights = mask.unsqueeze(-1).to(layers.dtype)
        pooled = (layers * weights).sum(1) / weights.sum(1)
        return self.text_model.projection_head(pooled)


class MedClipBackbone(ClipBackbone):
    family = "bert"
    weights_file_name = "pytorch_model.bin"  # MedCLIP's own checkpoint name and key layout

    @classmethod
    def build(cls, name, config, vocab_file=None):
        model_cfg = config["model_cfg"]
        text_config = config["hf_text_config"]
        model = MedClipModel(model_cfg["vision_config"], text_config, model_cfg["embed_dim"],
                             model_cfg["init_logit_scale"])
        tokenizer = build_tokenizer(config["tokenizer"], model_cfg["context_length"],
                                    vocab_size=text_config["vocab_size"], vocab_file=vocab_file)
        return cls(name, model, tokenizer, ImageSpec.from_config(config["preprocess_cfg"]),
                   joint_dim=model_cfg["embed_dim"], ctx_dim=text_config["hidden_size"])

    def token_embedding_layer(self):
        return self.model.text_model.model.embeddings.word_embeddings

    def _encode_ids(self, ids, mask):
        return self.model.encode_text_tokens(mask, input_ids=ids)

    def _encode_embeds(self, embeds, mask):
        return self.model.encode_text_tokens(mask, inputs_embeds=embeds)

    @property
    def logit_scale(self):
        return self.model.logit_scale.detach().clamp(0, MAX_LOG_LOGIT_SCALE).exp()
