// ekd._C: Python helpers that are not tensor ops. It calls the op library's plain C++ API
// (include/ekd) directly, on numpy arrays, without the dispatcher or torch tensors.
#include "ekd/neighbors.hpp"
#include "ekd/parallel.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

namespace py = pybind11;

namespace {

using DArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using BArray = py::array_t<bool, py::array::c_style | py::array::forcecast>;

struct Structure {
    DArray positions;
    DArray cell;
    BArray pbc;
};

Structure as_structure(const py::handle& positions, const py::handle& cell, const py::handle& pbc) {
    Structure s{DArray::ensure(positions), DArray::ensure(cell), BArray::ensure(pbc)};
    if (!s.positions || s.positions.ndim() != 2 || s.positions.shape(1) != 3) {
        throw py::value_error("`positions` must be an n x 3 array of numbers");
    }
    if (!s.cell || s.cell.ndim() != 2 || s.cell.shape(0) != 3 || s.cell.shape(1) != 3) {
        throw py::value_error("`cell` must be a 3 x 3 array (rows are lattice vectors)");
    }
    if (!s.pbc || s.pbc.ndim() != 1 || s.pbc.shape(0) != 3) {
        throw py::value_error("`pbc` must be 3 booleans");
    }
    return s;
}

py::tuple min_pair_distance(const py::handle& positions, const py::handle& cell, const py::handle& pbc,
                            double cutoff) {
    Structure s = as_structure(positions, cell, pbc);
    int64_t i = -1, j = -1;
    double d;
    try {
        py::gil_scoped_release release;
        d = ekd::min_pair_distance(s.positions.data(), s.positions.shape(0), s.cell.data(), s.pbc.data(),
                                   cutoff, &i, &j);
    } catch (const ekd::InputError& e) {
        throw py::value_error(e.what());
    }
    return py::make_tuple(d, i, j);
}

py::tuple neighbor_pairs(const py::handle& positions, const py::handle& cell, const py::handle& pbc,
                         double cutoff) {
    Structure s = as_structure(positions, cell, pbc);
    ekd::PairList list;
    try {
        py::gil_scoped_release release;
        ekd::neighbor_search(s.positions.data(), s.positions.shape(0), s.cell.data(), s.pbc.data(), cutoff, 0,
                             true, list);
    } catch (const ekd::InputError& e) {
        throw py::value_error(e.what());
    }
    const py::ssize_t n = static_cast<py::ssize_t>(list.size());
    py::array_t<int64_t> first(n), second(n), shifts({n, py::ssize_t(3)});
    std::copy(list.first.begin(), list.first.end(), first.mutable_data());
    std::copy(list.second.begin(), list.second.end(), second.mutable_data());
    std::copy(list.shifts.begin(), list.shifts.end(), shifts.mutable_data());
    return py::make_tuple(first, second, shifts);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "ekd native helpers that are not tensor ops (numpy in, numpy out)";
    m.attr("ekd_version") = EKD_VERSION;
    m.attr("torch_version") = EKD_TORCH_VERSION;
    m.def("min_pair_distance", &min_pair_distance, py::arg("positions"), py::arg("cell"), py::arg("pbc"),
          py::arg("cutoff"),
          "Smallest interatomic distance below `cutoff` (Angstrom) in one structure, O(N) with a cell "
          "list. Returns (distance, i, j); (inf, -1, -1) when no pair is closer than the cutoff.");
    m.def("neighbor_pairs", &neighbor_pairs, py::arg("positions"), py::arg("cell"), py::arg("pbc"),
          py::arg("cutoff"),
          "Full neighbor list of one structure as numpy arrays (first, second, shifts); the same "
          "search as the torch op ekd::neighbor_list.");
    m.def(
        "parallel_plan",
        [](int64_t work, int64_t units) {
            const ekd::ParallelPlan p = ekd::parallel_plan(work, units);
            return py::make_tuple(p.threads, p.chunks);
        },
        py::arg("work"), py::arg("units"),
        "(threads, chunks) an interaction kernel uses for `work` multiply-adds over `units` atoms or "
        "pairs at the current torch thread count (include/ekd/parallel.hpp).");
}
