#include "netsteer/common/log.h"

#include <sys/prctl.h>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <spdlog/pattern_formatter.h>

#include <cstdio>
#include <future>
#include <memory>
#include <vector>

namespace netsteer::log {

namespace {
// %* : the message payload, JSON-escaped, so every JSON log line stays valid JSON.
class JsonPayloadFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    std::string esc = json_escape(std::string_view(msg.payload.data(), msg.payload.size()));
    dest.append(esc.data(), esc.data() + esc.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonPayloadFlag>();
  }
};
thread_local const PodScope* t_pod = nullptr;

// %@ : utc_timestamp() of the line. A pattern with no built-in time flag never calls gmtime.
class UtcStampFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    auto ts = utc_timestamp(msg.time);
    dest.append(ts.text, ts.text + ts.len);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<UtcStampFlag>(); }
};

}  // namespace

struct PodScopeAccess {
  static const std::string& uid(const PodScope& p) { return p.uid_; }
  static const std::string& pod(const PodScope& p) { return p.pod_; }
};

PodScope::PodScope(std::string uid, std::string ns, std::string name)
    : prev_(t_pod), uid_(std::move(uid)), pod_(name.empty() ? "" : ns + "/" + name) {
  t_pod = this;
}
PodScope::~PodScope() { t_pod = prev_; }

namespace {
// %& : ,"pod_uid":"…","pod":"ns/name" when the logging thread is inside a PodScope.
class JsonPodFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& dest) override {
    if (!t_pod) return;
    std::string f = ",\"pod_uid\":\"" + json_escape(PodScopeAccess::uid(*t_pod)) + "\"";
    if (!PodScopeAccess::pod(*t_pod).empty()) f += ",\"pod\":\"" + json_escape(PodScopeAccess::pod(*t_pod)) + "\"";
    dest.append(f.data(), f.data() + f.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JsonPodFlag>(); }
};
}  // namespace

Result<Format> parse_format(const std::string& s) {
  if (s == "text") return Format::kText;
  if (s == "json") return Format::kJson;
  return Error::msg("unknown log format '" + s + "' (want text or json)", EINVAL);
}

UtcStamp utc_timestamp(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  auto ms = floor<milliseconds>(t);
  auto day = floor<days>(ms);
  year_month_day ymd{day};
  hh_mm_ss hms{ms - day};
  UtcStamp out;
  out.len = std::snprintf(out.text, sizeof out.text, "%04d-%02u-%02uT%02d:%02d:%02d.%03d", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()), static_cast<int>(hms.hours().count()),
                static_cast<int>(hms.minutes().count()), static_cast<int>(hms.seconds().count()),
                static_cast<int>(hms.subseconds().count()));
  return out;
}

std::string json_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

Status setup(Format format, const std::string& level, const std::string& file, bool to_stderr) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off")
    return Error::msg("unknown log level '" + level + "'", EINVAL);
  std::vector<spdlog::sink_ptr> sinks;
  if (to_stderr) sinks.push_back(std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (!file.empty()) {
    try {
      sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(file, false));
    } catch (const spdlog::spdlog_ex& e) {
      return Error::msg(std::string("open log file: ") + e.what(), EIO);
    }
  }
  auto logger = std::make_shared<spdlog::logger>("netsteer", sinks.begin(), sinks.end());
  // Timestamps in UTC (node logs are), written by %@ rather than spdlog's %Y..%e: those make it
  // call gmtime, and glibc's gmtime reads and parses /etc/localtime once per process (tzset):
  // 0.3-0.4 ms of every CNI ADD of the short-lived netsteer-cni (A/B, bench/RESULTS.md).
  auto f = std::make_unique<spdlog::pattern_formatter>();
  f->add_flag<UtcStampFlag>('@');
  if (format == Format::kJson)
    f->add_flag<JsonPayloadFlag>('*').add_flag<JsonPodFlag>('&').set_pattern(
        R"({"ts":"%@+00:00","level":"%l","msg":"%*"%&})");
  else
    f->set_pattern("%@Z %^%l%$ %v");
  logger->set_formatter(std::move(f));
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  return {};
}

namespace {

// The calling thread only: PR_SET_NAME needs no /proc (which a DaemonSet may mount read-only).
void name_thread(std::string_view name) {
  std::string comm = "ns-" + std::string(name);
  comm.resize(std::min<size_t>(comm.size(), 15));
  (void)::prctl(PR_SET_NAME, comm.c_str(), 0, 0, 0);
}

}  // namespace

std::thread start_thread(std::string_view name, std::function<void()> body) {
  // The promise is shared: the new thread may still be inside set_value when the caller has
  // returned and dropped its copy.
  auto named = std::make_shared<std::promise<void>>();
  std::future<void> done = named->get_future();
  std::thread t([n = std::string(name), named, body = std::move(body)]() mutable {
    name_thread(n);
    named->set_value();
    named.reset();
    body();
  });
  done.wait();
  return t;
}

}  // namespace netsteer::log
