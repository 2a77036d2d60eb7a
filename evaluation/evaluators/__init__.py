"""Evaluators: one module each, one interface (see base.py). The module name is the registry:
an eval config entry {"type": "rec", ...} builds evaluation.evaluators.rec.Evaluator."""
