#include "netsteer/agent/state_store.h"
#include "netsteer/common/file.h"

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
  return write_file_atomic(path(), data, 0600);
}

}  // namespace netsteer::agent
