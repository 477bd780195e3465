"""Evaluation: retrieval accuracy (Figure 6); benchmark scoring and tables follow."""
