"""Evaluation on precomputed embeddings: retrieval metrics, zero-shot probes, and computing embeddings."""
