"""The networks of the SAM families, one module per part (plain PyTorch, differentiable).

`backbones/` holds the image encoders; the prompt encoder, the two-way transformer and the mask
decoder sit beside them; `sam.py` puts a family's parts together with its pre- and post-processing.
"""
