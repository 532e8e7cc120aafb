"""Small GroundingDINO and OWLv2 models with seeded random weights, built through the real
transformers classes and PIL processors and saved to a folder as `save_pretrained` does (what
a downloaded model is): no pretrained weights exist on these machines. Their tokenizers have a
tiny vocabulary of the test's words."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["dog", "tree", "building", "truck", "a", "photo", "of"]


def grounding_dino(folder: Path) -> Path:
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessorPil, GroundingDinoProcessor, SwinConfig)

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=24, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                                   out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=20, encoder_n_points=2, decoder_n_points=2,
        max_text_len=32,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 200}),
        tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def owlv2(folder: Path) -> Path:
    """OWLv2 on a 96x96 input (6x6 patches of 16 px). Its box head's last layer is zeroed, so each
    patch's box is the patch's own cell (OWLv2 adds a per-patch bias to the head's output): the
    boxes are known by hand. The scores come from the random class embeddings, with the class
    head's learned scale set to ~0.4 and its shift to 0, so that they spread around 0.5 instead of
    saturating at 0 or 1."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    vocab: dict[str, int] = {}
    merges = []
    for word in WORDS:  # BPE pieces that build each word letter by letter
        for ch in word:
            vocab.setdefault(ch, len(vocab))
            vocab.setdefault(ch + "</w>", len(vocab))
        piece = word[0]
        for i, ch in enumerate(word[1:]):
            right = ch + "</w>" if i == len(word) - 2 else ch
            merges.append((piece, right))
            piece += right
            vocab.setdefault(piece, len(vocab))
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))
    torch.manual_seed(0)
    config = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=bos, eos_token_id=eos,
                         pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=96, patch_size=16),
        projection_dim=32,
    )
    model = Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
        model.class_head.logit_scale.weight.zero_()
        model.class_head.logit_scale.bias.fill_(-0.9)  # elu(-0.9) + 1 = 0.41
        model.class_head.logit_shift.weight.zero_()
        model.class_head.logit_shift.bias.zero_()
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 96, "width": 96}),
                               tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
