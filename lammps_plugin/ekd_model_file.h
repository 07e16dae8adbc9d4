// Reading a model file once per LAMMPS job: rank 0 reads the file, every rank receives those
// bytes and checks and loads them (ekd_model.h). Ranks that each opened the file would read it
// at different times, and a file rewritten in between (even atomically, by `ekd export`) would
// give the ranks different models, silently (issue 24, item 2). LAMMPS side of the plugin: MPI,
// no torch.
#pragma once

#include <mpi.h>

#include <string>

#include "ekd_model.h"

namespace ekd_lammps {

// Collective over `comm`. Throws ModelError (rank 0's message) on every rank alike, so that all
// ranks stop together.
ModelFile read_model_file(const std::string &path, MPI_Comm comm);

}  // namespace ekd_lammps
