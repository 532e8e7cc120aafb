"""Image encoders: SAM's ViT (vit.py) and MobileSAM's TinyViT (tiny_vit.py)."""
