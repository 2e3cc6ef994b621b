"""Frozen-encoder features and the rankings on them, shared by models.train (model selection)
and models.eval (the report); nothing here imports either."""
