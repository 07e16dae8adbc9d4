// See ekd_model_file.h.
#include "ekd_model_file.h"

#include "ekd_archive.h"  // read_file

#include <algorithm>
#include <climits>

namespace ekd_lammps {

namespace {

// MPI_Bcast of `n` bytes from rank 0, in pieces an int count can describe.
void broadcast(char *data, long long n, MPI_Comm comm) {
    for (long long at = 0; at < n; at += INT_MAX)
        MPI_Bcast(data + at, static_cast<int>(std::min<long long>(INT_MAX, n - at)), MPI_CHAR, 0, comm);
}

}  // namespace

ModelFile read_model_file(const std::string &path, MPI_Comm comm) {
    int me = 0;
    MPI_Comm_rank(comm, &me);
    std::string bytes, why;
    if (me == 0) {
        try {
            bytes = read_file(path);
        } catch (const ModelError &e) {
            why = e.what();
        }
    }
    // the size, or -(length of rank 0's message + 1)
    long long n = why.empty() ? static_cast<long long>(bytes.size()) : -static_cast<long long>(why.size()) - 1;
    MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, comm);
    if (n < 0) {
        why.resize(static_cast<size_t>(-n - 1));
        broadcast(why.data(), -n - 1, comm);
        throw ModelError(why);
    }
    bytes.resize(static_cast<size_t>(n));
    broadcast(bytes.data(), n, comm);
    return model_file(path, std::move(bytes));  // every rank checks the same bytes: the same verdict
}

}  // namespace ekd_lammps
