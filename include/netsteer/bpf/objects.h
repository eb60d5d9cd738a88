// Named, owned BPF object fds (programs, links, maps) of one pod, pinned under one bpffs
// directory so `bpftool` shows what belongs to whom, and re-opened from there after a restart.
#pragma once

#include <nlohmann/json.hpp>

#include <bpf/bpf.h>

#include <map>
#include <string>
#include <vector>

#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer::bpf {

class BpfObjects {
 public:
  BpfObjects() = default;
  explicit BpfObjects(std::string dir) : dir_(std::move(dir)) {}

  // Re-opens every pin under dir (bpf_obj_get). Fails when dir has no pins.
  static Result<BpfObjects> open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Takes ownership of fd and pins it at dir/name (creating dir). On error fd is closed.
  Status add(const std::string& name, UniqueFd fd);
  bool has(const std::string& name) const { return fds_.count(name) != 0; }
  int fd(const std::string& name) const;  // -1 when absent
  // Unpins and closes one object (a link detaches once its last reference is gone).
  void drop(const std::string& name);
  // Unpins and closes everything, then removes dir.
  void remove_all();
  std::vector<std::string> names() const;
  // {name: {"id": .., "pin": ..}} from bpf_obj_get_info_by_fd.
  nlohmann::json describe() const;

 private:
  std::string dir_;
  std::map<std::string, UniqueFd> fds_;
};

// Kernel id of a BPF program/map/link fd (0 when unknown).
uint32_t object_id(int fd);

// A typed view of a BPF map fd (after Android's BpfMap<K,V>); does not own the fd.
template <typename K, typename V>
class BpfMap {
 public:
  explicit BpfMap(int fd) : fd_(fd) {}
  Status put(const K& k, const V& v, uint64_t flags = BPF_ANY) const {
    if (::bpf_map_update_elem(fd_, &k, &v, flags) < 0) return Error::from_errno(errno, "bpf map update");
    return {};
  }
  // Absent keys are not an error.
  Status remove(const K& k) const {
    if (::bpf_map_delete_elem(fd_, &k) < 0 && errno != ENOENT) return Error::from_errno(errno, "bpf map delete");
    return {};
  }
  Result<V> get(const K& k) const {
    V v{};
    if (::bpf_map_lookup_elem(fd_, &k, &v) < 0) return Error::from_errno(errno, "bpf map lookup");
    return v;
  }
  // Per-CPU maps: the values of every possible CPU.
  Result<std::vector<V>> get_percpu(const K& k) const;

 private:
  int fd_;
};

int possible_cpus();

template <typename K, typename V>
Result<std::vector<V>> BpfMap<K, V>::get_percpu(const K& k) const {
  int n = possible_cpus();
  if (n <= 0) return Error::msg("cannot count possible CPUs", EINVAL);
  // The kernel copies values rounded up to 8 bytes per CPU.
  static_assert(sizeof(V) % 8 == 0, "per-CPU values must be a multiple of 8 bytes");
  std::vector<V> vals(static_cast<size_t>(n));
  if (::bpf_map_lookup_elem(fd_, &k, vals.data()) < 0) return Error::from_errno(errno, "bpf per-cpu map lookup");
  return vals;
}

}  // namespace netsteer::bpf
