#include "netsteer/protocol/channel.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

namespace netsteer::protocol {

namespace {
Result<sockaddr_un> unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path))
    return Error::msg("unix socket path too long or empty: '" + path + "'", ENAMETOOLONG);
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}
}  // namespace

Status set_send_timeout(int fd, std::chrono::milliseconds timeout) {
  auto ms = std::max<long long>(timeout.count(), 1);
  timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) return Error::from_errno(errno, "SO_SNDTIMEO");
  return {};
}

Result<SeqpacketChannel> SeqpacketChannel::connect(const std::string& path, std::chrono::milliseconds timeout) {
  NS_TRY(sockaddr_un a, unix_addr(path));
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_errno(errno, "socket(AF_UNIX, SOCK_SEQPACKET)");
  NS_TRY_STATUS(set_send_timeout(fd.get(), timeout));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    if (errno == EAGAIN)
      return Error::msg("connect to agent at " + path + ": its accept queue stayed full for " +
                            std::to_string(timeout.count()) + " ms (agent busy or stuck)", ETIMEDOUT);
    return Error::from_errno(errno, "connect to agent at " + path);
  }
  return SeqpacketChannel(std::move(fd));
}

Status SeqpacketChannel::send(std::string_view data, const std::vector<int>& fds) const {
  // One packet must fit the send buffer (EMSGSIZE otherwise): grow it for large replies (a
  // `list` of 1000 pods), by force when the caller holds CAP_NET_ADMIN.
  if (data.size() > kLargePacket) {
    int want = static_cast<int>(std::min<size_t>(data.size() * 2 + 65536, kMaxPacketBuffer));
    if (::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want) < 0)
      (void)::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
  }
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 256)];
  if (!fds.empty()) {
    if (fds.size() > 253) return Error::msg("too many fds for one packet", EINVAL);
    size_t len = sizeof(int) * fds.size();
    msg.msg_control = ctrl;
    msg.msg_controllen = CMSG_SPACE(len);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(len);
    std::memcpy(CMSG_DATA(c), fds.data(), len);
  }
  ssize_t n;
  do {
    n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Error::from_errno(errno, "sendmsg");
  return {};
}

Result<Packet> SeqpacketChannel::recv(size_t max_size) const {
  Packet p;
  // The packet's real length first (MSG_PEEK|MSG_TRUNC), so a large limit costs nothing for
  // the usual small packet.
  ssize_t len;
  do {
    len = ::recv(fd_.get(), nullptr, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
  } while (len < 0 && errno == EINTR);
  size_t want = len > 0 ? std::min(static_cast<size_t>(len), max_size) : 0;
  p.data.resize(want + 1);
  iovec iov{p.data.data(), p.data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kMaxFdsPerPacket)];
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  ssize_t n;
  do {
    n = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Error::from_errno(errno, "recvmsg");
  // Own every fd first, whatever else is wrong with the packet.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        p.fds.emplace_back(fd);
      }
    }
  }
  p.ctrl_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  p.truncated = (msg.msg_flags & MSG_TRUNC) != 0 || static_cast<size_t>(n) > max_size;
  p.data.resize(std::min(static_cast<size_t>(n), max_size));
  if (n == 0 && p.fds.empty()) p.data.clear();
  return p;
}

Status SeqpacketChannel::wait_readable(std::chrono::milliseconds timeout) const {
  pollfd pfd{fd_.get(), POLLIN, 0};
  int r;
  do {
    r = ::poll(&pfd, 1, static_cast<int>(timeout.count()));
  } while (r < 0 && errno == EINTR);
  if (r < 0) return Error::from_errno(errno, "poll");
  if (r == 0) return Error::msg("timed out waiting for the agent's reply", ETIMEDOUT);
  return {};
}

Result<PeerCred> SeqpacketChannel::peer_cred() const {
  ucred c{};
  socklen_t len = sizeof c;
  if (::getsockopt(fd_.get(), SOL_SOCKET, SO_PEERCRED, &c, &len) < 0)
    return Error::from_errno(errno, "SO_PEERCRED");
  return PeerCred{c.pid, c.uid, c.gid};
}

Result<UniqueFd> listen_seqpacket(const std::string& path, int backlog) {
  NS_TRY(sockaddr_un a, unix_addr(path));
  std::error_code ec;
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::filesystem::create_directories(parent, ec);
    if (ec) return Error::msg("create " + parent.string() + ": " + ec.message(), ec.value());
  }
  // Replace a stale socket, but never delete something that is not a socket.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Error::msg(path + " exists and is not a socket", EEXIST);
    if (::unlink(path.c_str()) < 0) return Error::from_errno(errno, "remove stale socket " + path);
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error::from_errno(errno, "socket(AF_UNIX, SOCK_SEQPACKET)");
  // Create it 0600 from the start: no window where others could connect.
  mode_t old = ::umask(0177);
  int br = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  int berr = errno;
  ::umask(old);
  if (br < 0) return Error::from_errno(berr, "bind " + path);
  if (::chmod(path.c_str(), 0600) < 0) return Error::from_errno(errno, "chmod " + path);
  if (::listen(fd.get(), backlog) < 0) return Error::from_errno(errno, "listen " + path);
  return fd;
}

}  // namespace netsteer::protocol
