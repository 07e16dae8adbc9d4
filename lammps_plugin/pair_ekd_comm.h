// pair_style ekd's communication through LAMMPS (pair_ekd_comm.cpp): the per-layer feature
// exchange of mode halo, and the CPU clock its timings use.
#pragma once

#include "ekd_model.h"

#include <ctime>
#include <vector>

namespace LAMMPS_NS {

class PairEKD;

// CPU seconds of the calling thread (torch runs on it with `threads 1`): the work of this rank,
// not inflated by other processes sharing the cores.
inline double thread_cpu() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

// The per-layer feature exchange of mode halo, with LAMMPS's own communication pattern (the
// swaps of comm_brick/comm_tiled): forward copies owned rows to every ghost copy, ghosts of
// ghosts included; reverse sums ghost rows onto their owners, last swap first. The model's rows
// (EKDSystem: owned atoms, then one row per partner atom of another rank; `lammps_row` gives the
// LAMMPS atom of each) are placed in a buffer of LAMMPS's owned + ghost rows around each exchange.
class HaloComm : public ekd_lammps::HaloExchange {
public:
    HaloComm(PairEKD *pair, const std::vector<int> &lammps_row) : p(pair), row(lammps_row) {}
    void forward(double *rows, int width) override;
    void reverse(double *rows, int width) override;

private:
    PairEKD *p;
    const std::vector<int> &row;
    std::vector<double> buf;
};

}  // namespace LAMMPS_NS
