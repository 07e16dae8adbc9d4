// Operator signatures of the ekd library, and nothing else: kernels are registered per device
// in cpu/*.cpp and cuda/*.cu, autograd in autograd.cpp. TorchScript, Python and the LAMMPS
// plugin all reach the ops through this one schema.
#include <torch/library.h>

#ifndef EKD_VERSION
#define EKD_VERSION "unknown"
#endif
#ifndef EKD_TORCH_VERSION
#define EKD_TORCH_VERSION "unknown"
#endif

namespace {
// Version strings as ops, so an exported TorchScript model or the LAMMPS plugin can check the
// library it runs against without Python.
std::string ekd_version() { return EKD_VERSION; }
std::string ekd_torch_version() { return EKD_TORCH_VERSION; }
}  // namespace

TORCH_LIBRARY(ekd, m) {
    // All pairs |r_ij| < cutoff of a batch of structures (full list, both directions).
    //   positions [N, 3] float; batch [N] int64, non-decreasing structure index of each atom;
    //   cells [B, 3, 3] (rows: lattice vectors); pbc [B, 3] bool.
    // Returns pair_first [P], pair_second [P] (int64, global atom indices) and shifts [P, 3]
    // (int64) with r_ij = positions[j] - positions[i] + shifts @ cells[batch[i]].
    m.def("neighbor_list(Tensor positions, Tensor batch, Tensor cells, Tensor pbc, float cutoff)"
          " -> (Tensor, Tensor, Tensor)");
    m.def("version() -> str", &ekd_version);
    m.def("torch_version() -> str", &ekd_torch_version);
}
