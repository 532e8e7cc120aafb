"""The fast inference path beside the plain networks in `samkit.modeling`: engines that read the
plain modules' weights (they own none) and compute the same outputs (to float32 rounding, tested
against the plain modules) with the image-side work shared between prompts and the attention in
factored form. `engine.DecoderEngine` is what `Sam.decode` runs; `mask_decoder.FastMaskDecoder`
the mask decoder's engine, `transformer` and `factored` its parts, `prompt_encoder` the kept
dense positional encoding."""
