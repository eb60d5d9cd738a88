#include "netsteer/bpf/objects.h"

#include <bpf/libbpf.h>
#include <unistd.h>

#include <filesystem>

namespace netsteer::bpf {

namespace fs = std::filesystem;

Result<BpfObjects> BpfObjects::open(const std::string& dir, KeepOpen keep) {
  BpfObjects o(dir, keep);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename();
    UniqueFd fd;
    if (keep(name)) {
      fd.reset(::bpf_obj_get(e.path().c_str()));
      if (!fd) return Error::from_errno(errno, "open pin " + e.path().string());
    }
    o.fds_[name] = std::move(fd);
  }
  if (ec) return Error::msg("read pin dir " + dir + ": " + ec.message(), ec.value());
  if (o.fds_.empty()) return Error::msg("no pins under " + dir, ENOENT);
  o.dir_made_ = true;
  return o;
}

Status BpfObjects::pin_at(const std::string& name, int fd) {
  if (!dir_made_) {
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) return Error::msg("create pin dir " + dir_ + ": " + ec.message(), ec.value());
    dir_made_ = true;
  }
  std::string path = dir_ + "/" + name;
  if (::bpf_obj_pin(fd, path.c_str()) < 0) return Error::from_errno(errno, "pin " + path);
  return {};
}

Status BpfObjects::add(const std::string& name, UniqueFd fd) {
  if (!fd) return Error::msg("no fd for " + name, EBADF);
  NS_TRY_STATUS(pin_at(name, fd.get()));
  if (!keep_(name)) fd.reset();
  fds_[name] = std::move(fd);
  return {};
}

Status BpfObjects::pin(const std::string& name, int fd) {
  if (fd < 0) return Error::msg("no fd for " + name, EBADF);
  UniqueFd kept;
  if (keep_(name)) {
    kept = dup_fd(fd);
    if (!kept) return Error::from_errno(errno, "dup " + name);
  }
  NS_TRY_STATUS(pin_at(name, fd));
  fds_[name] = std::move(kept);
  return {};
}

int BpfObjects::fd(const std::string& name) const {
  auto it = fds_.find(name);
  return it == fds_.end() || !it->second ? -1 : it->second.get();
}

ObjRef BpfObjects::ref(const std::string& name) const {
  auto it = fds_.find(name);
  if (it == fds_.end()) return {};
  if (it->second) return ObjRef::borrowed(it->second.get());
  return ObjRef::owned(UniqueFd(::bpf_obj_get((dir_ + "/" + name).c_str())));
}

void BpfObjects::drop(const std::string& name) {
  ::unlink((dir_ + "/" + name).c_str());
  fds_.erase(name);
}

void BpfObjects::remove_all() {
  for (const auto& [name, fd] : fds_) ::unlink((dir_ + "/" + name).c_str());
  fds_.clear();
  // Pins someone else left in our directory are ours too (a crash between pin and record).
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) ::unlink(e.path().c_str());
  ::rmdir(dir_.c_str());
  dir_made_ = false;
}

std::vector<std::string> BpfObjects::names() const {
  std::vector<std::string> v;
  for (const auto& [n, fd] : fds_) v.push_back(n);
  return v;
}

uint32_t object_id(int fd) {
  // The id is the second field of prog, map and link info alike; a union-sized buffer serves all.
  union {
    bpf_prog_info prog;
    bpf_map_info map;
    bpf_link_info link;
  } info{};
  uint32_t len = sizeof info;
  if (::bpf_obj_get_info_by_fd(fd, &info, &len) < 0) return 0;
  // type/id layouts differ: prog_info {type, id}, map_info {type, id}, link_info {type, id}.
  return info.prog.id;
}

nlohmann::json BpfObjects::describe() const {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [name, fd] : fds_) j[name] = {{"id", object_id(ref(name).get())}, {"pin", dir_ + "/" + name}};
  return j;
}

int possible_cpus() { return libbpf_num_possible_cpus(); }

}  // namespace netsteer::bpf
