"""The op library and its Python faces: :mod:`~ekd.ops.library` (loads ``libekd_ops.so``,
``torch.ops.ekd``), :mod:`~ekd.ops.threads` (OpenMP waits and thread counts),
:mod:`~ekd.ops.kernels` (ekd's ops as hippynn's interaction kernels). Importing this package loads
nothing: :mod:`ekd` imports :mod:`~ekd.ops.threads` before torch is imported."""
