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

// A BPF object fd for the length of a scope: borrowed from BpfObjects when it keeps the object
// open, or opened from its pin (and closed again) when it does not.
class ObjRef {
 public:
  ObjRef() = default;
  static ObjRef borrowed(int fd) {
    ObjRef r;
    r.fd_ = fd;
    return r;
  }
  static ObjRef owned(UniqueFd fd) {
    ObjRef r;
    r.fd_ = fd.get();
    r.owned_ = std::move(fd);
    return r;
  }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
  UniqueFd owned_;
};

class BpfObjects {
 public:
  // Which objects stay open (the rest live on in their pins only: a pod costs the agent a few
  // fds, not one per program, map and link — 1000 pods fit a 20k fd limit).
  using KeepOpen = bool (*)(const std::string& name);
  static bool keep_all(const std::string&) { return true; }

  BpfObjects() = default;
  explicit BpfObjects(std::string dir, KeepOpen keep = keep_all) : dir_(std::move(dir)), keep_(keep) {}

  // Re-opens the pins under dir that `keep` wants open (bpf_obj_get); records the others by
  // name. Fails when dir has no pins.
  static Result<BpfObjects> open(const std::string& dir, KeepOpen keep = keep_all);

  const std::string& dir() const { return dir_; }
  // Takes ownership of fd and pins it at dir/name (creating dir); closes it unless kept open.
  // On error fd is closed.
  Status add(const std::string& name, UniqueFd fd);
  // Pins a borrowed fd (the caller keeps it) at dir/name; a kept-open object gets a dup of it.
  // What a fresh pod's objects take: no dup and close per object that lives on in its pin only.
  Status pin(const std::string& name, int fd);
  bool has(const std::string& name) const { return fds_.count(name) != 0; }
  // A kept-open object's fd (hot paths); -1 when absent or not kept open.
  int fd(const std::string& name) const;
  // Any object: borrowed when kept open, else opened from its pin. Invalid when absent.
  ObjRef ref(const std::string& name) const;
  // Unpins and closes one object (a link detaches once its last reference is gone).
  void drop(const std::string& name);
  // Unpins and closes everything, then removes dir.
  void remove_all();
  std::vector<std::string> names() const;
  // {name: {"id": .., "pin": ..}} from bpf_obj_get_info_by_fd.
  nlohmann::json describe() const;

 private:
  std::string dir_;
  KeepOpen keep_ = keep_all;
  std::map<std::string, UniqueFd> fds_;  // invalid fd: pinned only
  bool dir_made_ = false;  // dir_ exists (made or found by this object): no mkdir per pin

  Status pin_at(const std::string& name, int fd);
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
  // Deletes every entry (hash maps); returns how many.
  Result<size_t> clear() const {
    size_t n = 0;
    K k{};
    while (::bpf_map_get_next_key(fd_, nullptr, &k) == 0) {
      if (::bpf_map_delete_elem(fd_, &k) < 0 && errno != ENOENT) return Error::from_errno(errno, "bpf map delete");
      ++n;
    }
    return n;
  }

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
