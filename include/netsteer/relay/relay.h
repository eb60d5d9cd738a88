// The relay: accepts captured connections on a pod's 15001/15006/15008 listeners and carries them
// to their original destination with splice() through pooled pipes, on a fixed number of epoll
// worker threads whatever the pod count. No thread or process per connection or per pod.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "netsteer/common/inet.h"
#include "netsteer/common/result.h"
#include "netsteer/netns/netns.h"

namespace netsteer::relay {

struct RelayOptions {
  size_t workers = 2;
  std::chrono::milliseconds idle_timeout{std::chrono::hours(1)};
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  size_t max_pipes = 1024;        // bounded pipe pool; connections without a pipe wait for one
  size_t pipe_size = 64 * 1024;   // F_SETPIPE_SZ
  uint32_t mark = 0x539;          // SO_MARK of every upstream socket created in a pod netns
};

enum class Direction { kInbound, kOutbound, kTunnel };

// Per-pod counters; also summed node-wide by the metrics module.
struct PodCounters {
  std::atomic<uint64_t> opened[3]{};   // indexed by Direction
  std::atomic<uint64_t> active[3]{};
  std::atomic<uint64_t> failed[3]{};   // upstream connect failed / refused / timed out
  std::atomic<uint64_t> bytes_to_upstream[3]{};
  std::atomic<uint64_t> bytes_to_client[3]{};
};

struct PodRelaySpec {
  std::string uid;                 // for logs
  netns::NetnsHandle netns;        // upstream sockets are created inside it
  std::vector<IpAddr> pod_ips;     // 15008 CONNECT targets must be one of these
  int outbound_listener = -1;      // not owned; valid until remove_pod() returns
  int inbound_listener = -1;
  int tunnel_listener = -1;
  // Register/unregister the inbound upstream socket's local (client) address with sk_lookup.
  std::function<Status(const SockAddr&)> add_bypass;
  std::function<void(const SockAddr&)> remove_bypass;
  std::shared_ptr<PodCounters> counters;
};

class RelayEngine {
 public:
  explicit RelayEngine(RelayOptions opts = {});
  ~RelayEngine();
  RelayEngine(const RelayEngine&) = delete;
  RelayEngine& operator=(const RelayEngine&) = delete;

  // Starts accepting on the pod's listeners. Returns a handle for remove_pod().
  Result<uint64_t> add_pod(PodRelaySpec spec);
  // Synchronous: when it returns, no worker touches the pod's listeners and every connection of
  // the pod is closed (clients see a reset).
  void remove_pod(uint64_t handle);

  size_t worker_count() const;
  size_t pipes_in_use() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace netsteer::relay
