"""Comparing the gradients of samkit's trained modules with the official ones' (fine-tuning parity)."""

from __future__ import annotations

# Parameters whose gradient is exactly zero in exact arithmetic: the key bias of an attention
# whose softmax runs over the image tokens adds the same value to every logit of a query, so it
# cancels. samkit's fast decoder leaves it out of the product (no gradient at all); the official
# one carries it through (a gradient of rounding noise). Both must be negligible.
SOFTMAX_INVARIANT = ("cross_attn_token_to_image.k_proj.bias", "final_attn_token_to_image.k_proj.bias")


def assert_same_gradients(ours: dict, theirs: dict) -> None:
    """ours, theirs: parameter name -> gradient tensor. Equal to float32 tolerance, relative to each
    parameter's largest gradient (with a floor relative to the largest of all)."""
    assert ours.keys() == theirs.keys()
    largest = max(float(g.abs().max()) for g in theirs.values())
    for name in theirs:
        scale = float(theirs[name].abs().max())
        diff = float((ours[name] - theirs[name]).abs().max())
        if name.endswith(SOFTMAX_INVARIANT):
            assert max(scale, float(ours[name].abs().max())) <= 1e-5 * largest, name
            continue
        assert diff <= 2e-4 * scale + 1e-7 * largest, f"{name}: gradients differ by {diff:.3g} (largest {scale:.3g})"
