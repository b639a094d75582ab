"""Human relevance judgments: the 0–4 rubric, rater-file import, multi-rater aggregation and agreement."""
