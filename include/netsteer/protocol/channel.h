// SeqpacketChannel: one connected AF_UNIX SOCK_SEQPACKET endpoint carrying JSON packets and fds.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer::protocol {

// recv() takes up to this many fds in one packet; more is reported as MSG_CTRUNC (and the kernel
// closes what did not fit), which is refused. A handed-over pod needs 8: netns, 3 listeners, DNS
// (UDP+TCP), UDP out and in.
inline constexpr size_t kMaxFdsPerPacket = 8;

struct Packet {
  std::string data;
  std::vector<UniqueFd> fds;  // every received fd is owned here before anything looks at it
  bool truncated = false;      // MSG_TRUNC: payload larger than the limit
  bool ctrl_truncated = false; // MSG_CTRUNC: control data (fds) did not fit
};

// Peer credentials from SO_PEERCRED.
struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

inline constexpr size_t kLargePacket = 64 * 1024;
inline constexpr size_t kMaxPacketBuffer = 32 << 20;
// Replies (a `list` of thousands of pods) may be this large; requests stay under kMaxMessageSize.
inline constexpr size_t kMaxReplySize = 16 << 20;

class SeqpacketChannel {
 public:
  SeqpacketChannel() = default;
  explicit SeqpacketChannel(UniqueFd fd) : fd_(std::move(fd)) {}

  // Connects to the listener at path. A full accept queue (a busy or flooded agent) is waited
  // out for at most `timeout` (SO_SNDTIMEO bounds a unix connect), then ETIMEDOUT.
  static Result<SeqpacketChannel> connect(const std::string& path,
                                          std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Sends one packet with optional fds (SCM_RIGHTS).
  Status send(std::string_view data, const std::vector<int>& fds = {}) const;
  // Receives one packet. Returns an empty Packet with data "" and no fds on orderly EOF
  // (check eof()). Payloads above max_size are reported as truncated.
  Result<Packet> recv(size_t max_size) const;
  // Waits for readability up to timeout; error ETIMEDOUT on expiry.
  Status wait_readable(std::chrono::milliseconds timeout) const;
  Result<PeerCred> peer_cred() const;

  int fd() const { return fd_.get(); }
  UniqueFd release() { return std::move(fd_); }
  bool valid() const { return fd_.valid(); }

 private:
  UniqueFd fd_;
};

// SO_SNDTIMEO: bounds a blocking send, and a unix connect waiting on a full accept queue.
// A zero timeout is rounded up to 1 ms (0 would mean "wait forever").
Status set_send_timeout(int fd, std::chrono::milliseconds timeout);

// Creates a listening SEQPACKET socket at path: parent dir made, stale socket replaced, mode 0600.
// The default backlog is the kernel's maximum (somaxconn caps it): a flood of idle connects must
// not fill the queue before the agent accepts and evicts them.
Result<UniqueFd> listen_seqpacket(const std::string& path, int backlog = SOMAXCONN);

}  // namespace netsteer::protocol
