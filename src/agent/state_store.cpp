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
    auto rec = record_from_json(e);
    if (!rec.ok()) return std::move(rec).error().wrap("state file " + path());
    out.push_back(std::move(*rec));
  }
  return out;
}

Result<PodRecord> record_from_json(const json& e) {
  if (!e.is_object()) return Error::msg("pod record must be an object", EINVAL);
  // Re-use the protocol's strict decoder for the pod part: one parser for one format.
  json req{{"type", "add"}, {"version", protocol::kVersion}, {"pod", e.value("pod", json::object())}};
  auto r = protocol::decode_request(req.dump());
  if (!r.ok()) return std::move(r).error();
  PodRecord rec;
  rec.spec = r->pod;
  auto u64 = [&](const char* k) {
    auto it = e.find(k);
    return it != e.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
  };
  rec.netns.dev = u64("netns_dev");
  rec.netns.ino = u64("netns_ino");
  rec.netns.cookie = u64("netns_cookie");  // absent in records of older agents: 0 = unknown
  auto pending = e.find("pending");
  rec.pending = pending != e.end() && pending->is_boolean() && pending->get<bool>();
  if (e.contains("capture") && e["capture"].is_object()) rec.capture = e["capture"];
  return rec;
}

json record_to_json(const PodRecord& p) {
  return {{"pod", protocol::pod_to_json(p.spec)},
          {"netns_dev", p.netns.dev},
          {"netns_ino", p.netns.ino},
          {"netns_cookie", p.netns.cookie},
          {"pending", p.pending},
          {"capture", p.capture}};
}

std::string serialize_record(const PodRecord& p) { return record_to_json(p).dump(); }

Status StateStore::save(const std::vector<std::string_view>& records) const {
  if (!enabled()) return {};
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) return Error::msg("create state dir " + dir_ + ": " + ec.message(), ec.value());
  size_t size = 32;
  for (auto r : records) size += r.size() + 2;
  std::string data;
  data.reserve(size);
  data += "{\"version\":1,\"pods\":[";
  for (size_t i = 0; i < records.size(); ++i) {
    data += i ? ",\n" : "\n";
    data += records[i];
  }
  data += "\n]}\n";
  // Everything the file describes (netns, pins, links) lives in kernel memory and is gone after
  // a power loss or reboot, so there is nothing to keep across one: the atomic rename protects
  // against the agent's own crash, and no fsync (~1 ms on disk, twice per enrol) is paid.
  return write_file_atomic(path(), data, 0600, Durability::process_crash);
}

}  // namespace netsteer::agent
