#include "netsteer/agent/state_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace netsteer::agent {

using nlohmann::json;

Result<std::vector<PodRecord>> StateStore::load() const {
  std::vector<PodRecord> out;
  if (!enabled()) return out;
  std::ifstream f(path());
  if (!f) return out;
  std::stringstream ss;
  ss << f.rdbuf();
  json j = json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("pods") || !j["pods"].is_array())
    return Error::msg("state file " + path() + " is corrupt", EINVAL);
  for (const auto& e : j["pods"]) {
    // Re-use the protocol's strict decoder for the pod part: one parser for one format.
    json req{{"type", "add"}, {"version", protocol::kVersion}, {"pod", e.value("pod", json::object())}};
    auto r = protocol::decode_request(req.dump());
    if (!r.ok()) return std::move(r).error().wrap("state file " + path());
    PodRecord rec;
    rec.spec = r->pod;
    rec.netns.dev = e.value("netns_dev", 0ULL);
    rec.netns.ino = e.value("netns_ino", 0ULL);
    rec.pending = e.value("pending", false);
    if (e.contains("capture") && e["capture"].is_object()) rec.capture = e["capture"];
    out.push_back(std::move(rec));
  }
  return out;
}

Status StateStore::save(const std::vector<PodRecord>& pods) const {
  if (!enabled()) return {};
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) return Error::msg("create state dir " + dir_ + ": " + ec.message(), ec.value());
  json a = json::array();
  for (const auto& p : pods)
    a.push_back({{"pod", protocol::pod_to_json(p.spec)},
                 {"netns_dev", p.netns.dev},
                 {"netns_ino", p.netns.ino},
                 {"pending", p.pending},
                 {"capture", p.capture}});
  std::string data = json{{"version", 1}, {"pods", a}}.dump(1);
  std::string tmp = path() + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return Error::from_errno(errno, "open " + tmp);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, "write " + tmp);
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) < 0) return Error::from_errno(errno, "fsync " + tmp);
  fd.reset();
  if (::rename(tmp.c_str(), path().c_str()) < 0) return Error::from_errno(errno, "rename " + tmp);
  return {};
}

}  // namespace netsteer::agent
