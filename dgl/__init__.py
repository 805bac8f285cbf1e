"""DGL: dynamic global-local prompt tuning for text-video retrieval on a frozen CLIP."""
