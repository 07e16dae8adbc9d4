// pair_style ekd's forward and reverse communication: the halo exchange of layer features and
// their gradients, and the per-model forces of an ensemble (summed on their owners).
#include "pair_ekd_comm.h"

#include "pair_ekd.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"

#include <mpi.h>

#include <algorithm>
#include <cstring>

using namespace LAMMPS_NS;

void HaloComm::forward(double *rows, int width) {
    const double t0 = MPI_Wtime(), c0 = thread_cpu();
    const size_t w = width, nlocal = p->atom->nlocal, nall = nlocal + p->atom->nghost;
    buf.resize(nall * w);
    std::copy(rows, rows + nlocal * w, buf.begin());
    p->comm_rows = buf.data();
    p->comm_width = width;
    p->check_comm_width(width, p->force->pair->comm_forward, "forward");
    p->comm->forward_comm(p, width);
    for (size_t r = nlocal; r < row.size(); ++r) std::copy_n(&buf[row[r] * w], w, rows + r * w);
    p->halo_time += MPI_Wtime() - t0;
    p->halo_cpu += thread_cpu() - c0;
}

void HaloComm::reverse(double *rows, int width) {
    const double t0 = MPI_Wtime(), c0 = thread_cpu();
    const size_t w = width, nlocal = p->atom->nlocal, nall = nlocal + p->atom->nghost;
    buf.assign(nall * w, 0.0);
    std::copy(rows, rows + nlocal * w, buf.begin());
    for (size_t r = nlocal; r < row.size(); ++r) std::copy_n(rows + r * w, w, &buf[row[r] * w]);
    p->comm_rows = buf.data();
    p->comm_width = width;
    p->check_comm_width(width, p->force->pair->comm_reverse, "reverse");
    p->comm->reverse_comm(p, width);
    // the ghosts' share now sits on their owners: counted once
    std::copy(buf.begin(), buf.begin() + nlocal * w, rows);
    std::fill(rows + nlocal * w, rows + row.size() * w, 0.0);
    p->halo_time += MPI_Wtime() - t0;
    p->halo_cpu += thread_cpu() - c0;
}

// Forward and reverse communication of `comm_width` doubles per atom from `comm_rows` (owned +
// ghost rows): the layer features and their gradients in mode halo, per-model forces otherwise.
int PairEKD::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/, int * /*pbc*/) {
    const int w = comm_width;
    for (int i = 0; i < n; ++i) std::memcpy(buf + static_cast<size_t>(i) * w, comm_rows + static_cast<size_t>(list[i]) * w, w * sizeof(double));
    return n * w;
}

void PairEKD::unpack_forward_comm(int n, int first, double *buf) {
    std::memcpy(comm_rows + static_cast<size_t>(first) * comm_width, buf, static_cast<size_t>(n) * comm_width * sizeof(double));
}

int PairEKD::pack_reverse_comm(int n, int first, double *buf) {
    std::memcpy(buf, comm_rows + static_cast<size_t>(first) * comm_width, static_cast<size_t>(n) * comm_width * sizeof(double));
    return n * comm_width;
}

void PairEKD::unpack_reverse_comm(int n, int *list, double *buf) {
    const int w = comm_width;
    for (int i = 0; i < n; ++i) {
        double *row = comm_rows + static_cast<size_t>(list[i]) * w;
        for (int k = 0; k < w; ++k) row[k] += buf[static_cast<size_t>(i) * w + k];
    }
}

// LAMMPS's buffers hold `limit` doubles per atom (Comm::init); a wider exchange would overwrite
// the heap, so stop instead (init_style sets the sizes; this guards against a path it missed).
void PairEKD::check_comm_width(int width, int limit, const char *direction) const {
    if (width > limit)
        error->one(FLERR, fmt::format("pair_style ekd: {} communication of {} values per atom, but LAMMPS sized its "
                                      "buffers for {}; this is a bug in pair_style ekd, please report it with the "
                                      "input", direction, width, limit));
}
