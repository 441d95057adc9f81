"""Data pipelines: text sources, tokenized language-model blocks and batching."""
