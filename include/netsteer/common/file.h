// Files that readers must never see half-written (state file, CNI configs, installed binaries).
#pragma once

#include <sys/types.h>

#include <string>

#include "netsteer/common/result.h"

namespace netsteer {

// Writes `data` to a temporary file beside `path`, fsyncs it with `mode`, and renames it over
// `path`. On error the temporary file is removed and `path` is untouched.
Status write_file_atomic(const std::string& path, const std::string& data, mode_t mode);

}  // namespace netsteer
