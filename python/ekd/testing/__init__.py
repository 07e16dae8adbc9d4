"""Test oracles and test models, used by ekd's tests and benchmarks (not by the library's own
computations).

* :mod:`ekd.testing.reference`: pure-torch, brute-force versions of every op of the op library
  (neighbor list, envsum/sensesum/featsum and the factorised tensor ops), the oracle the compiled
  ops are compared with;
* :mod:`ekd.testing.toy`: :func:`toy_model`, a small message-passing model of kind "toy" with
  random weights, exported with :func:`ekd.deploy.model_file.save_model` like a trained member and run by
  the ASE calculator and the LAMMPS plugin.

Importing this package does not import torch.
"""

from .toy import toy_class, toy_model

__all__ = ["toy_class", "toy_model"]
