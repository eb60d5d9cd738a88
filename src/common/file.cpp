#include "netsteer/common/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "netsteer/common/unique_fd.h"

namespace netsteer {

Status write_file_atomic(const std::string& path, const std::string& data, mode_t mode, Durability durability) {
  std::filesystem::path p(path);
  std::string tmp = (p.parent_path() / ("." + p.filename().string() + ".tmp")).string();
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) return Error::from_errno(errno, "create " + tmp);
  auto failed = [&](const char* what) {
    int e = errno;
    ::unlink(tmp.c_str());
    return Error::from_errno(e, std::string(what) + " " + tmp);
  };
  for (size_t off = 0; off < data.size();) {
    ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return failed("write");
    off += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), mode) != 0) return failed("chmod");
  if (durability == Durability::power_loss && ::fsync(fd.get()) != 0) return failed("fsync");
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) return failed("rename");
  return {};
}

}  // namespace netsteer
