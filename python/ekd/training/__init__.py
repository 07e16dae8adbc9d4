"""Training: the HIPNN graphs (:mod:`~ekd.training.models`), the one training loop of every role
(:mod:`~ekd.training.train`), a trained member on disk (:mod:`~ekd.training.member`), the ensemble's
labels (:mod:`~ekd.training.distill`) and teachers ekd does not train (:mod:`~ekd.training.external`)."""
