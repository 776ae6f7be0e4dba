"""Semantic cache: answer repeated (paraphrased) questions from a shared Redis cache."""
