"""The model registry and verified downloads of pretrained weights and sample photos."""
