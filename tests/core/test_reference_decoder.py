"""The plain reference decoder side (samkit.modeling: PromptEncoder, TwoWayTransformer, MaskDecoder)
against the official segment-anything modules, on the same perturbed weights.

Forward: sparse and dense prompt embeddings, the dense positional encoding, and the decoder's
low-res logits and IoU predictions for points (with and without the padding point), boxes,
points with boxes, mask inputs, single and multi-mask output, one prompt and batches.
Backward: on one batch, the loss and the gradient of every parameter of both modules (and of
the image embedding) against the official's. The reference must also stay usable for what
builds on it: the same state_dict keys, dropout in SAM 2's Attention sense, and ONNX export
(run by onnxruntime).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from samkit.modeling.mask_decoder import MaskDecoder
from samkit.modeling.prompt_encoder import PromptEncoder
from samkit.modeling.transformer import Attention, TwoWayTransformer

try:
    from . import oracle
except ImportError:
    import oracle

# Float32 rounding, measured on these cases (2-thread CPU): prompt embeddings and transformer
# outputs differ from the official by up to 5.9e-7 of their largest value, logits by 7.4e-7,
# IoU predictions by 3.7e-8, gradients by 4.0e-6 of a parameter's largest gradient (6.3e-7 for
# the image embedding's). The tolerances leave a margin of >= 10x.
EMBED_TOL = 1e-5  # relative to the largest |value|
LOGIT_TOL = 1e-5  # relative to the largest |logit|
IOU_TOL = 5e-7
GRAD_TOL = 5e-5  # relative to the largest |grad| of that parameter (or 1e-3 of the model's largest)


def _official_modules():
    oracle.official()
    from segment_anything.modeling import MaskDecoder as OfficialMaskDecoder
    from segment_anything.modeling import PromptEncoder as OfficialPromptEncoder
    from segment_anything.modeling import TwoWayTransformer as OfficialTransformer

    torch.manual_seed(0)
    prompt_encoder = OfficialPromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
    )
    decoder = OfficialMaskDecoder(
        num_multimask_outputs=3,
        transformer=OfficialTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    oracle.perturb_(prompt_encoder, seed=21)
    oracle.perturb_(decoder, seed=22)
    # unit-like logits, as a trained model's (random weights give ~0.1, see oracle.LOGIT_GAIN)
    with torch.no_grad():
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(oracle.LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(oracle.LOGIT_GAIN)
    return prompt_encoder.eval(), decoder.eval()


@pytest.fixture(scope="module")
def modules():
    """(our PromptEncoder, our MaskDecoder, official PromptEncoder, official MaskDecoder), the
    same weights loaded strictly (the same keys and shapes)."""
    official_pe, official_dec = _official_modules()
    ours_pe, ours_dec = PromptEncoder(), MaskDecoder()
    ours_pe.load_state_dict(official_pe.state_dict(), strict=True)
    ours_dec.load_state_dict(official_dec.state_dict(), strict=True)
    return ours_pe.eval(), ours_dec.eval(), official_pe, official_dec


def _prompts(kind: str, batch: int, seed: int):
    """(points or None, boxes or None, masks or None) in the 1024 input frame."""
    gen = torch.Generator().manual_seed(seed)
    points = boxes = masks = None
    if "points" in kind:
        coords = torch.rand(batch, 3, 2, generator=gen) * 1000
        labels = torch.randint(0, 2, (batch, 3), generator=gen)
        labels[:, -1] = -1 if "padded" in kind else labels[:, -1]  # a "not a point" label given by the caller
        points = (coords, labels)
    if "box" in kind:
        corner = torch.rand(batch, 2, generator=gen) * 600
        boxes = torch.cat([corner, corner + 50 + torch.rand(batch, 2, generator=gen) * 300], dim=1)
    if "mask" in kind:
        masks = torch.randn(batch, 1, 256, 256, generator=gen) * 4
    return points, boxes, masks


PROMPT_KINDS = ["points", "points_padded", "box", "points_box", "points_mask", "box_mask", "mask"]


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("kind", PROMPT_KINDS)
@pytest.mark.parametrize("batch", [1, 5])
def test_prompt_encoder_matches_official(modules, kind, batch):
    ours, _, official, _ = modules
    prompt = _prompts(kind, batch, seed=batch * 7 + len(kind))
    with torch.no_grad():
        sparse, dense = ours(*prompt)
        ref_sparse, ref_dense = official(*prompt)
    assert sparse.shape == ref_sparse.shape and dense.shape == ref_dense.shape
    if sparse.shape[1]:
        assert _max_rel(sparse, ref_sparse) <= EMBED_TOL
    assert _max_rel(dense, ref_dense) <= EMBED_TOL


def test_prompt_encoder_without_prompts_and_dense_pe(modules):
    ours, _, official, _ = modules
    with torch.no_grad():
        sparse, dense = ours(None, None, None)
        ref_sparse, ref_dense = official(None, None, None)
        pe, ref_pe = ours.get_dense_pe(), official.get_dense_pe()
    assert sparse.shape == ref_sparse.shape == (1, 0, 256)
    assert torch.equal(dense, ref_dense)
    assert pe.shape == ref_pe.shape == (1, 256, 64, 64) and _max_rel(pe, ref_pe) <= EMBED_TOL
    # computed when asked for: a changed frequency matrix shows at once
    with torch.no_grad():
        matrix = ours.pe_layer.positional_encoding_gaussian_matrix
        matrix.mul_(1.01)
        try:
            assert not torch.allclose(ours.get_dense_pe(), pe)
        finally:
            matrix.div_(1.01)


def _decode(prompt_encoder, decoder, image, prompt, multimask):
    sparse, dense = prompt_encoder(*prompt)
    return decoder(
        image_embeddings=image, image_pe=prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask,
    )


def _image(seed: int) -> torch.Tensor:
    return torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "kind,batch,multimask",
    [
        ("points", 1, True),  # a click (point + padding point), three masks
        ("points", 1, False),
        ("points_padded", 3, True),
        ("box", 4, False),
        ("points_box", 2, True),
        ("points_mask", 3, False),  # mask input: a dense embedding per prompt
        ("mask", 2, True),
        ("points", 11, True),  # a batch of prompts
    ],
)
def test_mask_decoder_matches_official(modules, kind, batch, multimask):
    ours_pe, ours_dec, official_pe, official_dec = modules
    image = _image(batch + len(kind))
    prompt = _prompts(kind, batch, seed=batch * 13 + len(kind))
    with torch.no_grad():
        masks, iou = _decode(ours_pe, ours_dec, image, prompt, multimask)
        ref_masks, ref_iou = _decode(official_pe, official_dec, image, prompt, multimask)
    assert masks.shape == ref_masks.shape == (batch, 3 if multimask else 1, 256, 256)
    assert iou.shape == ref_iou.shape
    assert _max_rel(masks, ref_masks) <= LOGIT_TOL
    assert float((iou - ref_iou).abs().max()) <= IOU_TOL
    # the logits say something (unit-like spread), so the sign comparison is meaningful
    assert float(ref_masks.std()) > 0.5
    assert float(((masks > 0) != (ref_masks > 0)).float().mean()) < 1e-5


def test_predict_masks_returns_every_mask_token(modules):
    _, ours_dec, _, official_dec = modules
    gen = torch.Generator().manual_seed(5)
    image, pe = _image(5), torch.randn(1, 256, 64, 64, generator=gen)
    sparse = torch.randn(3, 4, 256, generator=gen)
    dense = torch.randn(3, 256, 64, 64, generator=gen) * 0.3
    with torch.no_grad():
        masks, iou = ours_dec.predict_masks(image, pe, sparse, dense)
        ref_masks, ref_iou = official_dec.predict_masks(image, pe, sparse, dense)
    assert masks.shape == ref_masks.shape == (3, 4, 256, 256) and iou.shape == (3, 4)
    assert _max_rel(masks, ref_masks) <= LOGIT_TOL and float((iou - ref_iou).abs().max()) <= IOU_TOL


def test_transformer_matches_official_module(modules):
    """The two-way transformer alone, with image and prompts of batch 2 (what SAM 2's decoder
    and a fine-tuning loop call)."""
    _, ours_dec, _, official_dec = modules
    gen = torch.Generator().manual_seed(9)
    image, pe = torch.randn(2, 256, 64, 64, generator=gen), torch.randn(2, 256, 64, 64, generator=gen)
    tokens = torch.randn(2, 7, 256, generator=gen)
    with torch.no_grad():
        queries, keys = ours_dec.transformer(image, pe, tokens)
        ref_queries, ref_keys = official_dec.transformer(image, pe, tokens)
    assert queries.shape == ref_queries.shape and keys.shape == ref_keys.shape == (2, 4096, 256)
    assert _max_rel(queries, ref_queries) <= EMBED_TOL and _max_rel(keys, ref_keys) <= EMBED_TOL


def _loss(prompt_encoder, decoder, image, batches, targets):
    total = 0.0
    for (prompt, multimask), (target_masks, target_iou) in zip(batches, targets):
        masks, iou = _decode(prompt_encoder, decoder, image, prompt, multimask)
        total = total + F.binary_cross_entropy_with_logits(masks, target_masks) + F.mse_loss(iou, target_iou)
    return total


def test_gradients_match_official(modules):
    """One training batch (points with boxes, three masks; points with mask inputs, one mask)
    through both implementations in train mode: the same loss and the same gradient for every
    parameter of the prompt encoder and the mask decoder, and for the image embedding."""
    import copy

    ours_pe, ours_dec, official_pe, official_dec = (copy.deepcopy(m).train() for m in modules)
    batches = [(_prompts("points_box", 3, seed=31), True), (_prompts("points_mask", 2, seed=32), False)]
    gen = torch.Generator().manual_seed(33)
    targets = [
        ((torch.rand(3, 3, 256, 256, generator=gen) > 0.5).float(), torch.rand(3, 3, generator=gen)),
        ((torch.rand(2, 1, 256, 256, generator=gen) > 0.5).float(), torch.rand(2, 1, generator=gen)),
    ]
    image = _image(34).requires_grad_(True)
    ref_image = image.detach().clone().requires_grad_(True)
    loss = _loss(ours_pe, ours_dec, image, batches, targets)
    ref_loss = _loss(official_pe, official_dec, ref_image, batches, targets)
    loss.backward()
    ref_loss.backward()
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))

    ours = dict(ours_pe.named_parameters(prefix="prompt_encoder"))
    ours.update(ours_dec.named_parameters(prefix="mask_decoder"))
    official = dict(official_pe.named_parameters(prefix="prompt_encoder"))
    official.update(official_dec.named_parameters(prefix="mask_decoder"))
    assert ours.keys() == official.keys()
    # the first mask token's hypernetwork only reaches the single-mask output: used here
    ref_grads = {name: p.grad for name, p in official.items()}
    assert not [name for name, g in ref_grads.items() if g is None]
    largest = max(float(g.abs().max()) for g in ref_grads.values())
    problems = []
    for name, param in ours.items():
        grad, ref = param.grad, ref_grads[name]
        if grad is None:
            problems.append(f"{name}: no gradient")
            continue
        scale = max(float(ref.abs().max()), 1e-3 * largest)
        diff = float((grad - ref).abs().max())
        if diff > GRAD_TOL * scale:
            problems.append(f"{name}: max diff {diff:.2e}, largest official grad {float(ref.abs().max()):.2e}")
    assert not problems, "\n".join(problems)
    # the parameters that matter get real gradients (not all zero)
    for name in ("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight",
                 "mask_decoder.output_upscaling.0.weight", "prompt_encoder.mask_downscaling.0.weight",
                 "prompt_encoder.point_embeddings.2.weight", "prompt_encoder.not_a_point_embed.weight"):
        assert float(ours[name].grad.abs().max()) > 0, name
    assert _max_rel(image.grad, ref_image.grad) <= GRAD_TOL


def test_attention_dropout_only_in_training():
    """SAM 2's Attention takes a dropout probability for the attention weights in training."""
    torch.manual_seed(0)
    attention = Attention(64, 4, downsample_rate=2, dropout=0.5)
    plain = Attention(64, 4, downsample_rate=2)
    plain.load_state_dict(attention.state_dict())
    q, kv = torch.randn(2, 5, 64), torch.randn(2, 9, 64)
    with torch.no_grad():
        assert torch.equal(attention.eval()(q, kv, kv), plain.eval()(q, kv, kv))
        assert not torch.allclose(attention.train()(q, kv, kv), plain(q, kv, kv))


def test_attention_with_other_key_width():
    """kv_in_dim: keys and values wider than the queries (SAM 2's memory attention)."""
    attention = Attention(64, 4, kv_in_dim=96)
    out = attention(torch.randn(2, 5, 64), torch.randn(2, 9, 96), torch.randn(2, 9, 96))
    assert out.shape == (2, 5, 64)
    assert attention.k_proj.weight.shape == (64, 96) and attention.q_proj.weight.shape == (64, 64)


def test_reference_decoder_exports_to_onnx(modules, tmp_path):
    """The plain prompt-to-mask path traces into ONNX, with a dynamic number of prompts, and
    onnxruntime gives the same logits."""
    import onnxruntime

    ours_pe, ours_dec, _, _ = modules

    class Decode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.prompt_encoder, self.mask_decoder = ours_pe, ours_dec

        def forward(self, image, coords, labels):
            sparse, dense = self.prompt_encoder((coords, labels), None, None)
            return self.mask_decoder(image, self.prompt_encoder.get_dense_pe(), sparse, dense, True)

    image = _image(40)
    (coords, labels), _, _ = _prompts("points", 2, seed=41)
    path = tmp_path / "decoder.onnx"
    prompts, points = torch.export.Dim("prompts"), torch.export.Dim("points")
    torch.onnx.export(
        Decode().eval(), (image, coords, labels.float()), str(path), dynamo=True,
        input_names=["image", "coords", "labels"], output_names=["masks", "iou"],
        dynamic_shapes={"image": None, "coords": {0: prompts, 1: points}, "labels": {0: prompts, 1: points}},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    coords, labels = torch.rand(5, 2, 2) * 1000, torch.tensor([[1, 0]] * 5)  # other sizes than traced
    masks, iou = session.run(None, {"image": image.numpy(), "coords": coords.numpy(), "labels": labels.float().numpy()})
    with torch.no_grad():
        ref_masks, ref_iou = Decode().eval()(image, coords, labels.float())
    assert masks.shape == (5, 3, 256, 256)
    assert _max_rel(torch.from_numpy(masks), ref_masks) <= LOGIT_TOL
    assert float((torch.from_numpy(iou) - ref_iou).abs().max()) <= IOU_TOL


def test_mask_decoder_takes_the_official_constructor_arguments():
    transformer = TwoWayTransformer(depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048)
    decoder = MaskDecoder(
        transformer_dim=256, transformer=transformer, num_multimask_outputs=3, activation=torch.nn.GELU,
        iou_head_depth=3, iou_head_hidden_dim=256,
    )
    assert decoder.transformer is transformer
    assert decoder.state_dict().keys() == MaskDecoder().state_dict().keys()
