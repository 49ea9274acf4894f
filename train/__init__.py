"""Training, evaluation, index building and publishing scripts."""
