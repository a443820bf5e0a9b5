"""Item embeddings: models and the worker that keeps them fresh."""
