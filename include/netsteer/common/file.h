// Files that readers must never see half-written (state file, CNI configs, installed binaries).
#pragma once

#include <sys/types.h>

#include <string>

#include "netsteer/common/result.h"

namespace netsteer {

// Whether the write must survive a power loss (fsync before the rename) or only a crash of the
// writing process (the rename alone is atomic to every other reader).
enum class Durability { power_loss, process_crash };

// Writes `data` to a temporary file beside `path` with `mode`, and renames it over `path`. On
// error the temporary file is removed and `path` is untouched.
Status write_file_atomic(const std::string& path, const std::string& data, mode_t mode,
                         Durability durability = Durability::power_loss);

}  // namespace netsteer
