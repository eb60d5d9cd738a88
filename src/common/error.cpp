#include <cstring>
#include <string>

#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

#include <fcntl.h>

namespace netsteer {

Error Error::from_errno(int err, std::string_view context) {
  std::string m(context);
  m += ": ";
  m += std::strerror(err);
  return Error{err, std::move(m)};
}

Error Error::from_libbpf(long ret, std::string_view context) {
  int err = ret < 0 ? static_cast<int>(-ret) : 0;
  if (ret == -1 && errno != 0) err = errno;  // old-style -1 + errno
  if (err == 0) err = errno ? errno : EINVAL;
  return from_errno(err, context);
}

Error Error::wrap(std::string_view context) const& {
  return Error{code, std::string(context) + ": " + message};
}
Error Error::wrap(std::string_view context) && {
  message.insert(0, std::string(context) + ": ");
  return std::move(*this);
}

UniqueFd dup_fd(int fd) { return UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 3)); }

}  // namespace netsteer
