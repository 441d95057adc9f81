"""Model definitions: GPT-2 (with Gopher options), BERT, MLPs and the shared layers."""
