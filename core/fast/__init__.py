"""The fast inference path beside the plain networks in `samkit.modeling`: the same outputs
(to float32 rounding, tested against the plain modules), computed with the image-side work shared
between prompts and the attention in factored form."""
