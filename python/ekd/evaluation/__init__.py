"""Evaluation: energy / conformer ΔE / force metrics of members and ensembles
(:mod:`~ekd.evaluation.metrics`), their tables, figures and report, benchmark files and
``ekd score`` (:mod:`~ekd.evaluation.score`)."""
