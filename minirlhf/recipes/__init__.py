"""End-to-end recipes built from minirlhf's stages. `sentiment_zh` is the flagship demo."""
