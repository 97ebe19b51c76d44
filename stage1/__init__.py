"""EfficientSAM3 Stage 1: distil SAM3's vision trunk and text encoder into small students."""
