"""mmsegmentation integration (registered on import)."""
