"""SAM 2 / 2.1 for images: the SAM 2 mask decoder, the prompt encoder as SAM 2 feeds it, and the
image model (model.Sam2). The image encoder (Hiera trunk + FPN neck) is in ``backbones/``."""
