"""Deployment: the model-file format and its trust rule (:mod:`~ekd.deploy.model_metadata`,
:mod:`~ekd.deploy.model_file`, ``model_format.json``, ``model_code/``), export to TorchScript
(:mod:`~ekd.deploy.export`) and AOTInductor (:mod:`~ekd.deploy.aoti`), the ASE calculator
(:mod:`~ekd.deploy.calculator`) and the LAMMPS plugin's locator (:mod:`~ekd.deploy.plugin`, imported
by LAMMPS's ``lmp`` wrapper before every run: this package imports nothing at import time).

The TorchScript classes of exported models stay in :mod:`ekd.scripted`, :mod:`ekd.scripted_hipnn`,
:mod:`ekd.script_helpers` and :mod:`ekd.envsum`: their module paths are part of every exported file's
code (``__torch__.ekd.scripted...``), which the trust rule compares byte for byte, so they move only
with a model-format version bump."""
