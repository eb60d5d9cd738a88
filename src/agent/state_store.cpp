#include "netsteer/agent/state_store.h"
#include "netsteer/common/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace netsteer::agent {

using nlohmann::json;

StateStore::~StateStore() = default;

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
  uint64_t gen = j.value("generation", uint64_t{0});
  for (const auto& e : j["pods"]) {
    auto rec = record_from_json(e);
    if (!rec.ok()) return std::move(rec).error().wrap("state file " + path());
    out.push_back(std::move(*rec));
  }
  // The journal continues this snapshot only when it names its generation.
  std::ifstream jf(journal_path());
  std::vector<std::string> lines;
  for (std::string l; std::getline(jf, l);) lines.push_back(std::move(l));
  if (lines.empty()) return out;
  json head = json::parse(lines[0], nullptr, false);
  if (head.is_discarded() || !head.is_object() || head.value("generation", uint64_t{0}) != gen || gen == 0) return out;
  for (size_t i = 1; i < lines.size(); ++i) {
    json op = json::parse(lines[i], nullptr, false);
    if (op.is_discarded() || !op.is_object()) {
      if (i + 1 == lines.size()) break;  // torn by a crash mid-append
      return Error::msg("state journal " + journal_path() + " line " + std::to_string(i + 1) + " is corrupt", EINVAL);
    }
    std::string uid;
    if (op.contains("put")) {
      auto rec = record_from_json(op["put"]);
      if (!rec.ok()) return std::move(rec).error().wrap("state journal " + journal_path());
      uid = rec->spec.uid;
      auto it = std::find_if(out.begin(), out.end(), [&](const PodRecord& r) { return r.spec.uid == uid; });
      if (it != out.end()) *it = std::move(*rec);
      else out.push_back(std::move(*rec));
    } else if (op.contains("del") && op["del"].is_string()) {
      uid = op["del"].get<std::string>();
      std::erase_if(out, [&](const PodRecord& r) { return r.spec.uid == uid; });
    } else {
      return Error::msg("state journal " + journal_path() + " line " + std::to_string(i + 1) + " has no operation", EINVAL);
    }
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
  // A generation above any an earlier agent wrote: from the file, then this process's count.
  uint64_t gen = generation_;
  if (gen == 0) {
    std::ifstream f(path());
    std::stringstream ss;
    ss << f.rdbuf();
    json j = json::parse(ss.str(), nullptr, false);
    if (!j.is_discarded() && j.is_object()) gen = j.value("generation", uint64_t{0});
  }
  gen++;
  size_t size = 64;
  for (auto r : records) size += r.size() + 2;
  std::string data;
  data.reserve(size);
  data += "{\"version\":1,\"generation\":" + std::to_string(gen) + ",\"pods\":[";
  for (size_t i = 0; i < records.size(); ++i) {
    data += i ? ",\n" : "\n";
    data += records[i];
  }
  data += "\n]}\n";
  // Everything the file describes (netns, pins, links) lives in kernel memory and is gone after
  // a power loss or reboot, so there is nothing to keep across one: the atomic rename protects
  // against the agent's own crash, and no fsync (~1 ms on disk, twice per enrol) is paid.
  NS_TRY_STATUS(write_file_atomic(path(), data, 0600, Durability::process_crash));
  // Then the new, empty journal (a crash before this leaves the old one, which names the old
  // generation and so is not replayed).
  journal_.reset();
  NS_TRY_STATUS(write_file_atomic(journal_path(), "{\"generation\":" + std::to_string(gen) + "}\n", 0600,
                                  Durability::process_crash));
  journal_.reset(::open(journal_path().c_str(), O_WRONLY | O_APPEND | O_CLOEXEC));
  if (!journal_) return Error::from_errno(errno, "open state journal " + journal_path());
  generation_ = gen;
  journal_entries_ = 0;
  return {};
}

Status StateStore::append(const std::string& line) const {
  if (!journal_) return Error::msg("state journal is not open (no snapshot written yet)", EBADF);
  // One write() per operation: with O_APPEND it lands whole or, after a crash, torn at the end.
  ssize_t n = ::write(journal_.get(), line.data(), line.size());
  if (n != static_cast<ssize_t>(line.size()))
    return Error::from_errno(n < 0 ? errno : EIO, "append to state journal " + journal_path());
  journal_entries_++;
  return {};
}

Status StateStore::append_put(std::string_view record) const {
  std::string line;
  line.reserve(record.size() + 10);
  line += "{\"put\":";
  line += record;
  line += "}\n";
  return append(line);
}

Status StateStore::append_del(const std::string& uid) const {
  return append(json{{"del", uid}}.dump() + "\n");
}

}  // namespace netsteer::agent
