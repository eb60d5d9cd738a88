// netsteer-cni: the commands (ADD, DEL, CHECK, STATUS, VERSION, GC) against the agent.
#include <spdlog/spdlog.h>

#include "netsteer/client/client.h"
#include "netsteer/cni/cni.h"
#include "netsteer/cni/trace.h"
#include "netsteer/common/log.h"
#include "netsteer/netns/netns.h"

namespace netsteer::cni {

using nlohmann::json;

namespace {

class Command {
 public:
  Command(const Env& env, std::string_view in) : env_(env), in_(in) {}

  Outcome run() {
    if (env_.command == "VERSION") return version();
    auto conf = parse_netconf(in_);
    if (!conf.ok()) return fail(conf.error());
    conf_ = std::move(*conf);
    if (auto st = log::setup(log::Format::kText, conf_.log_level, conf_.log_file, true); !st.ok())
      return fail(Error::msg(st.error().message, kInvalidConfig));
    who_ = pod_key(env_) + (env_.pod_name().empty() ? "" : " (" + env_.pod_namespace() + "/" + env_.pod_name() + ")");
    if (env_.command == "ADD") return add();
    if (env_.command == "DEL") return del();
    if (env_.command == "CHECK") return check();
    if (env_.command == "STATUS") return status();
    spdlog::debug("netsteer-cni GC: nothing to collect (the agent cleans pods whose netns is gone)");
    return {};  // GC
  }

 private:
  Outcome version() {
    json j = json::parse(in_.begin(), in_.end(), nullptr, false);
    std::string v = j.is_object() && j.value("cniVersion", json()).is_string() ? j["cniVersion"].get<std::string>() : "";
    return {0, json{{"cniVersion", v.empty() ? "1.1.0" : v}, {"supportedVersions", supported_versions()}}.dump()};
  }

  Outcome fail(const Error& e, const std::string& details = "") {
    spdlog::error("netsteer-cni {} {}: {}{}", env_.command, who_.empty() ? env_.container_id : who_, e.message,
                  details.empty() ? "" : " (" + details + ")");
    return {1, error_json(conf_.cni_version, e.code ? e.code : kIoFailure, e.message, details)};
  }

  Outcome prev_result() const { return {0, conf_.prev_result.dump()}; }

  // Connects to the agent; on failure applies failurePolicy: nullopt + *out set to the outcome.
  std::optional<client::Client> connect(Outcome* out, const Outcome& on_ignore) {
    auto c = client::Client::connect(conf_.socket_path, conf_.timeout);
    if (c.ok()) return std::move(*c);
    *out = unreachable(c.error(), on_ignore);
    return std::nullopt;
  }

  Outcome unreachable(const Error& e, const Outcome& on_ignore) {
    std::string msg = "netsteer agent unreachable at " + conf_.socket_path + ": " + e.message;
    if (conf_.failure_policy == FailurePolicy::kIgnore) {
      spdlog::warn("netsteer-cni {} {}: {}; failurePolicy=ignore: continuing WITHOUT traffic capture", env_.command,
                   who_, msg);
      return on_ignore;
    }
    return fail(Error::msg(msg, kTryAgainLater),
                "failurePolicy=fail: the pod is not started uncaptured; start netsteerd (the runtime retries)");
  }

  static bool agent_gone(const Error& e) {
    return e.code == ETIMEDOUT || e.code == ECONNRESET || e.code == EPIPE || e.code == ECONNREFUSED;
  }

  Outcome add() {
    if (conf_.prev_result.is_null())
      return fail(Error::msg("prevResult is required: chain netsteer-cni after the plugin that assigns the pod's "
                             "addresses",
                             kInvalidConfig));
    if (skipped(conf_, env_)) {
      spdlog::info("netsteer-cni ADD {}: excluded by netconf, not captured", who_);
      return prev_result();
    }
    // Checked before the agent is asked, and sent as opened (one open per ADD).
    auto ns = netns::NetnsHandle::open(env_.netns);
    if (!ns.ok()) return fail(Error::msg("CNI_NETNS " + env_.netns + ": " + ns.error().message, kUnknownContainer));
    protocol::PodSpec pod;
    pod.uid = pod_key(env_);
    pod.name = env_.pod_name().empty() ? env_.container_id.substr(0, 12) : env_.pod_name();
    pod.namespace_ = env_.pod_namespace();
    pod.ips = *result_ips(conf_.prev_result);  // validated by parse_netconf
    pod.netns_path = env_.netns;
    pod.exclusions = conf_.exclusions;
    pod.strict = conf_.strict;
    pod.no_dns = !conf_.capture_dns;
    pod.dns_upstream = conf_.dns_upstream;
    pod.udp = conf_.udp;
    pod.proxy = conf_.proxy;
    pod.skip_labels = skip_labels();
    Outcome out;
    trace::mark(trace::kConnect);
    auto c = connect(&out, prev_result());
    if (!c) return out;
    auto r = c->add(pod, ns->fd());
    trace::mark(trace::kReply);
    if (!r.ok()) {
      if (agent_gone(r.error())) return unreachable(r.error(), prev_result());
      // EAGAIN: the agent could not decide yet (e.g. the pod's labels are not readable): retry.
      return fail(Error::msg("netsteerd refused the pod: " + r.error().message,
                             r.error().code == EAGAIN ? kTryAgainLater : kAgentRefused));
    }
    spdlog::info("netsteer-cni ADD {}: {}{} (netns {}, {} IPs)", who_, r->data.value("result", "enrolled"),
                 r->data.contains("reason") ? " (" + r->data.value("reason", "") + ")" : "", env_.netns, pod.ips.size());
    return prev_result();
  }

  Outcome del() {
    if (skipped(conf_, env_)) return {};
    Outcome out;
    // DEL must succeed when there is nothing to remove, including when the agent is down: a
    // restarted agent drops enrolments whose netns is gone.
    auto c = connect(&out, {});
    if (!c) {
      spdlog::warn("netsteer-cni DEL {}: agent unreachable; nothing removed here", who_);
      return {};
    }
    protocol::Request req;
    req.type = protocol::MsgType::kDel;
    req.uid = pod_key(env_);
    auto r = c->call(req);
    if (!r.ok()) {
      if (r.error().code == ENOENT) {
        spdlog::debug("netsteer-cni DEL {}: not enrolled", who_);
        return {};
      }
      if (agent_gone(r.error())) return {};
      return fail(Error::msg("netsteerd could not unenrol the pod: " + r.error().message, kAgentRefused));
    }
    spdlog::info("netsteer-cni DEL {}: unenrolled", who_);
    return {};
  }

  Outcome check() {
    if (conf_.prev_result.is_null()) return fail(Error::msg("prevResult is required for CHECK", kInvalidConfig));
    if (skipped(conf_, env_)) return {};
    Outcome out;
    auto c = connect(&out, {});
    if (!c) return out;
    protocol::Request req;
    req.type = protocol::MsgType::kCheck;
    req.uid = pod_key(env_);
    if (auto labels = skip_labels(); !labels.empty()) {
      req.pod.uid = req.uid;
      req.pod.name = env_.pod_name();
      req.pod.namespace_ = env_.pod_namespace();
      req.pod.skip_labels = std::move(labels);
    }
    auto r = c->call(req);
    if (!r.ok()) return fail(Error::msg("pod " + req.uid + " capture check failed: " + r.error().message, kNotEnrolled));
    if (r->data.contains("skipped")) return {};  // left uncaptured on purpose (its labels)
    auto want = *result_ips(conf_.prev_result);
    const json& have = r->data["pod"]["ips"];
    for (const auto& ip : want) {
      if (std::find(have.begin(), have.end(), json(ip.str())) == have.end())
        return fail(Error::msg("pod " + req.uid + " is enrolled without address " + ip.str(), kNotEnrolled));
    }
    return {};
  }

  Outcome status() {
    Outcome out;
    auto c = connect(&out, {});
    if (!c) {
      if (out.exit_code == 0) return out;
      return fail(Error::msg("netsteer agent is not available at " + conf_.socket_path, kPluginNotAvailable));
    }
    protocol::Request req;
    req.type = protocol::MsgType::kHello;
    if (auto r = c->call(req); !r.ok())
      return fail(Error::msg("netsteer agent is not ready: " + r.error().message, kPluginNotAvailable));
    return {};
  }

  // excludePodLabels apply to Kubernetes pods only: without K8S_POD_NAMESPACE/NAME there are no labels.
  std::vector<std::string> skip_labels() const {
    if (env_.pod_namespace().empty() || env_.pod_name().empty()) return {};
    return conf_.exclude_pod_labels;
  }

  const Env& env_;
  std::string_view in_;
  NetConf conf_;
  std::string who_;
};

}  // namespace

Outcome run(const Env& env, std::string_view stdin_bytes) { return Command(env, stdin_bytes).run(); }

}  // namespace netsteer::cni
