// netsteerd: the node agent.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <thread>

#include "netsteer/common/accept.h"
#include "netsteer/agent/node_metrics.h"
#include "netsteer/agent/privileges.h"
#include "netsteer/agent/seccomp.h"
#include <fmt/ranges.h>
#include "netsteer/metrics/metrics.h"
#include "netsteer/agent/control.h"
#include "netsteer/agent/enrolment.h"
#include "netsteer/bpf/features.h"
#include "netsteer/bpf/keep_warm.h"
#include "netsteer/relay/access_log.h"
#include "netsteer/relay/relay.h"
#include "netsteer/client/client.h"
#include "netsteer/common/log.h"
#include "netsteer/netns/netns.h"

using namespace netsteer;

int main(int argc, char** argv) {
  CLI::App app{"netsteerd: eBPF-assisted traffic redirection agent (one per node)"};
  std::string socket_path = client::kDefaultSocket;
  std::string log_format = "text", log_level = "info";
  size_t executor_threads = 2;
  std::vector<uid_t> allow_uids{0};
  std::string state_dir = "/var/lib/netsteer";
  std::string pin_root = "/sys/fs/bpf/netsteer";
  app.add_option("--socket", socket_path, "control socket path (SOCK_SEQPACKET, created 0600)")
      ->capture_default_str();
  app.add_option("--log-format", log_format, "text or json")->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.add_option("--netns-threads", executor_threads, "threads that enter pod netns (fixed pool)")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  app.add_option("--allow-uid", allow_uids, "peer uids allowed on the control socket")->capture_default_str();
  app.add_option("--state-dir", state_dir, "where the enrolment state file lives")->capture_default_str();
  app.add_option("--pin-root", pin_root, "bpffs directory for per-pod pins")->capture_default_str();
  std::string tc_mode_opt = "auto";
  app.add_option("--tc-mode", tc_mode_opt, "tc guard attachment: auto (tcx when the kernel has it), tcx, clsact")
      ->capture_default_str();
  std::string guard_attach = "deferred";
  app.add_option("--guard-attach", guard_attach,
                 "tcx: attach a non-strict pod's tc guard after its enrol has answered (deferred: no RCU grace "
                 "period on the CNI ADD path; the guard's counters start a little later) or during it (sync). "
                 "Strict pods and clsact are always sync")
      ->check(CLI::IsMember({"deferred", "sync"}))
      ->capture_default_str();
  int guard_quiet_ms = 20;
  app.add_option("--guard-quiet-ms", guard_quiet_ms,
                 "deferred tc guards are attached once no enrol has run for this long (an attach holds rtnl "
                 "through an RCU grace period, which an enrol would otherwise wait out); doubles, up to 1 s, "
                 "while enrols keep meeting attaches, and comes back down when they stop")
      ->check(CLI::Range(1, 60000))
      ->capture_default_str();
  bool guard_pace = true;  // CLI11 reads on/off (and true/false, yes/no, 1/0) into a bool
  app.add_option("--guard-pace", guard_pace,
                 "deferred tc guards: on learns the pace pods arrive at and links a guard between two enrols "
                 "when it ends 10 ms before the next is due (and none that would not); off: the quiet period "
                 "alone decides (a baseline for benchmarks)")
      ->default_str("on");
  bool hold_static_keys = true;
  app.add_option("--static-keys", hold_static_keys,
                 "on: hold the kernel's sk_lookup and tc static keys for the agent's life (do-nothing programs in a "
                 "private netns), so no pod's enrol or removal patches kernel text; off: the first pod's enrol and "
                 "the last one's removal do (a baseline for benchmarks)")
      ->default_str("on");
  unsigned long fd_table = 65536;
  app.add_option("--fd-table", fd_table,
                 "file descriptors the agent's fd table holds from the start (capped by the limit): each time it "
                 "has to grow later, the thread opening the fd waits out an RCU grace period. Kernel memory: "
                 "~8 bytes per slot")
      ->check(CLI::Range(64UL, 1UL << 24))
      ->capture_default_str();
  size_t bpf_spares = 4;
  app.add_option("--bpf-spares", bpf_spares,
                 "pods' BPF objects kept loaded ahead of time (an enrol takes one instead of running the verifier; "
                 "each holds ~12 fds and a pod's map memory)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  relay::RelayOptions ropts;
  app.add_option("--relay-workers", ropts.workers, "relay worker threads (fixed, whatever the pod count)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--connect-timeout-ms", ropts.connect_timeout_ms, "upstream connect timeout")->capture_default_str();
  app.add_option("--idle-timeout-s", ropts.idle_timeout_s, "close relayed connections idle this long (0: never)")
      ->capture_default_str();
  app.add_option("--half-close-timeout-s", ropts.half_close_timeout_s,
                 "close a relayed connection with one side shut once nothing moved this long (0: idle timeout)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--tcp-user-timeout-ms", ropts.tcp_user_timeout_ms,
                 "TCP_USER_TIMEOUT on both sides: a peer leaving data unacknowledged this long is dead (0: kernel default)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--keepalive-idle-s", ropts.keepalive_idle_s, "TCP keepalive on both sides after this much silence (0: off)")
      ->capture_default_str()
      ->check(CLI::Range(0, 32767));
  app.add_option("--keepalive-interval-s", ropts.keepalive_interval_s, "seconds between keepalive probes")
      ->capture_default_str()
      ->check(CLI::Range(1, 32767));
  app.add_option("--keepalive-count", ropts.keepalive_count, "unanswered keepalive probes before a peer is dead")
      ->capture_default_str()
      ->check(CLI::Range(1, 127));
  uint32_t max_inbound_conns = bpf::kDefaultMaxInboundConns;
  app.add_option("--max-inbound-connections", max_inbound_conns,
                 "per pod: concurrent inbound relay connections (its sk_lookup bypass map; kernel memory is "
                 "allocated per open connection, none up front); beyond it a connection is reset and counted as "
                 "bypass_full")
      ->capture_default_str()
      ->check(CLI::Range(64u, 1u << 20));
  app.add_option("--pipe-size", ropts.pipe_size, "splice pipe size in bytes")->capture_default_str();
  bool no_accept_balance = false;
  app.add_flag("--no-accept-balance", no_accept_balance,
               "leave each new connection with the relay worker that accepted it (by default a worker holding "
               "clearly more connections than another hands a new one over)");
  app.add_option("--upstream-spares", ropts.upstream_spares,
                 "per relay worker: upstream sockets kept after a clean close and reused (connect AF_UNSPEC) for "
                 "the pod's next connection from the same source; closed after 5 s unused (0: off)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65536));
  bool no_dns = false;
  app.add_flag("--no-dns", no_dns, "capture no pod's DNS (by default UDP to port 53 goes to the 15053 proxy)");
  udp::Options dopts;
  std::string dns_upstream;
  app.add_option("--dns-upstream", dns_upstream,
                 "ADDR[:PORT]: answer captured DNS from this resolver (e.g. a node-local cache) instead of the "
                 "server the pod asked; the pod still sees the answer come from that server (a pod's own wins)");
  app.add_option("--dns-query-timeout-ms", dopts.dns_query_timeout_ms, "a DNS query unanswered this long counts as an upstream timeout")
      ->capture_default_str()
      ->check(CLI::Range(100, 60000));
  app.add_option("--dns-session-idle-ms", dopts.dns_session_idle_ms, "a DNS flow (client socket, server) idle this long is closed")
      ->capture_default_str()
      ->check(CLI::Range(100, 3600000));
  app.add_option("--dns-max-sessions", dopts.dns_max_sessions_per_pod,
                 "per pod: DNS flows kept at once; beyond it the least recently used is closed (counted)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  std::string proxy_out, proxy_in;
  bool proxy_pod_tlvs = false;
  app.add_option("--proxy-outbound", proxy_out,
                 "ADDR:PORT: hand every pod's outbound connections to this proxy (e.g. a node-local HAProxy) with a "
                 "PROXY v2 header, instead of dialling their destination (a pod's own setting wins)");
  app.add_option("--proxy-inbound", proxy_in, "ADDR:PORT: the same for connections to the pods");
  app.add_flag("--proxy-pod-tlvs", proxy_pod_tlvs,
               "put the pod's namespace/name (0xE0) and uid (0xE1) in the PROXY v2 header");
  std::string access_log_target = "off";
  app.add_option("--access-log", access_log_target,
                 "PATH|stderr|off: one JSON line per finished relayed connection (reopened on SIGHUP)")
      ->capture_default_str();
  int udp_idle_s = 60;
  app.add_option("--udp-idle-s", udp_idle_s, "a captured UDP flow with no datagram either way this long is closed")
      ->capture_default_str()
      ->check(CLI::Range(1, 86400));
  app.add_option("--udp-max-flows", dopts.udp_max_flows_per_pod,
                 "per pod: UDP flows (both directions) kept at once; beyond it the least recently used is closed (counted)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  bool cleanup_on_exit = false;
  std::string metrics_addr = "127.0.0.1:15020";
  std::string capture_mode = "bpf";
  app.add_option("--capture", capture_mode,
                 "bpf: install sk_lookup/tc/routing capture per pod; none: listeners + relay only (capture by "
                 "iptables/nft REDIRECT or TPROXY, e.g. for side-by-side benchmarks; inbound upstreams then use "
                 "the pod's address as source)")
      ->check(CLI::IsMember({"bpf", "none"}))
      ->capture_default_str();
  app.add_option("--metrics", metrics_addr, "Prometheus /metrics, /healthz, /readyz on HOST:PORT ('off' disables)")
      ->capture_default_str();
  std::string kube_api;
  agent::KubeApiOptions kube;
  long kube_timeout_ms = 2000;
  app.add_option("--kube-api", kube_api,
                 "Kubernetes API for pod labels (excludePodLabels): 'in-cluster' (service account) or an "
                 "https:// URL; empty: off (pods asking to be skipped by label are refused)");
  app.add_option("--kube-token-file", kube.token_file, "bearer token file for --kube-api URL");
  app.add_option("--kube-ca-file", kube.ca_file, "CA bundle for --kube-api URL (default: system CAs)");
  app.add_option("--kube-timeout-ms", kube_timeout_ms, "per-lookup deadline")->capture_default_str();
#ifdef NETSTEER_SANITIZED
  std::string seccomp_mode = "off";  // sanitizer runtimes need ptrace & co (see CMakeLists.txt)
#else
  std::string seccomp_mode = "on";
#endif
  app.add_option("--seccomp", seccomp_mode,
                 "system-call allow-list: on (others fail with EPERM), log (others allowed and audit-logged), off")
      ->capture_default_str();
  long control_idle_ms = 60000;
  app.add_option("--control-idle-timeout-ms", control_idle_ms,
                 "close control connections silent this long (slow or stuck peers)")
      ->capture_default_str();
  bool takeover = false;
  int drain_timeout_s = 3600;
  app.add_flag("--takeover", takeover,
               "hitless upgrade: receive every pod, listener and the control socket from the agent running at "
               "--socket, which then stops accepting and drains; starts normally when no agent runs");
  app.add_option("--drain-timeout-s", drain_timeout_s,
                 "after handing over to a new agent: keep relaying established connections this long at most")
      ->capture_default_str();
  app.add_flag("--cleanup-on-exit", cleanup_on_exit,
               "on SIGTERM remove every pod's capture (uninstall); default keeps it for the next agent");
  CLI11_PARSE(app, argc, argv);

  auto fmt = log::parse_format(log_format);
  if (!fmt.ok()) {
    std::fprintf(stderr, "netsteerd: %s\n", fmt.error().message.c_str());
    return 2;
  }
  if (auto st = log::setup(*fmt, log_level); !st.ok()) {
    std::fprintf(stderr, "netsteerd: %s\n", st.error().message.c_str());
    return 2;
  }

  // Block the shutdown signals before any thread starts, so only the control loop's signalfd
  // sees them; a broken peer must never kill us with SIGPIPE.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);  // the access log reopens on it (its own signalfd); never fatal
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Each pod holds 9 fds (netns, listeners, the maps used per connection) plus two per relayed
  // connection and pipes: the default soft limit of 1024 runs out at ~100 pods.
  unsigned long nofile = raise_nofile_limit();
  // Before any thread: growing the table then waits for no RCU grace period.
  unsigned long fd_slots = presize_fd_table(fd_table);
  reserve_accept_fds(ropts.workers + 1);  // each relay worker's and the control loop's
  spdlog::info("file descriptor limit: {}, fd table: {} slots", nofile, fd_slots);
  // Least privilege, before any thread exists (capabilities are per thread).
  if (auto p = agent::drop_privileges(); p.ok()) {
    spdlog::info("capabilities kept: {}{}; all others dropped (incl. bounding set), no_new_privs set",
                 fmt::join(p->kept, ","), p->missing.empty() ? "" : fmt::format(" (not held: {})", fmt::join(p->missing, ",")));
  } else {
    spdlog::critical("cannot drop privileges: {}", p.error().message);
    return 1;
  }
  if (auto m = agent::parse_seccomp_mode(seccomp_mode); !m.ok()) {
    spdlog::critical("{}", m.error().message);
    return 2;
  } else if (auto st = agent::install_seccomp(*m); !st.ok()) {
    spdlog::critical("cannot install the seccomp filter: {}", st.error().message);
    return 1;
  } else if (*m != agent::SeccompMode::kOff) {
    spdlog::info("seccomp: {} system calls allowed, others {}", agent::seccomp_allowed().size(),
                 *m == agent::SeccompMode::kLog ? "logged" : "fail with EPERM");
  }

  // A fresh node may not have bpffs mounted; per-pod pins live there.
  if (auto st = bpf::ensure_bpffs(); !st.ok()) spdlog::warn("bpffs: {}", st.error().message);
  auto features = bpf::probe_features();
  spdlog::info("kernel {}: sk_lookup {}, tc bpf {}, tcx {}", features.kernel_release, features.sk_lookup ? "yes" : "NO",
               features.sched_cls ? "yes" : "NO", features.tcx ? "yes" : "no (Linux < 6.6: clsact fallback)");
  if (auto st = bpf::require_capture_features(features); !st.ok()) {
    spdlog::critical("cannot run here: {}", st.error().message);
    return 1;
  }
  bpf::TcMode tc_mode = features.tcx ? bpf::TcMode::tcx : bpf::TcMode::clsact;
  if (tc_mode_opt != "auto") {
    auto m = bpf::parse_tc_mode(tc_mode_opt);
    if (!m.ok()) {
      spdlog::critical("{}", m.error().message);
      return 2;
    }
    if (*m == bpf::TcMode::tcx && !features.tcx) {
      spdlog::critical("--tc-mode tcx: kernel {} has no tcx links (BPF_TCX_INGRESS/EGRESS, needs Linux >= 6.6)",
                       features.kernel_release);
      return 1;
    }
    tc_mode = *m;
  }
  spdlog::info("tc guard attach mode: {}", bpf::to_string(tc_mode));
  // Held for the agent's life, so no pod's enrol or removal switches the kernel's sk_lookup and tc
  // static keys (a text patch on every CPU; bpf/netsteer_warm.bpf.c).
  std::unique_ptr<bpf::KeepWarm> warm;
  if (capture_mode == "bpf" && hold_static_keys) {
    if (auto w = bpf::KeepWarm::start(tc_mode); w.ok()) {
      warm = std::move(*w);
      spdlog::debug("static keys held: {}", warm->to_json().dump());
    } else {
      spdlog::warn("sk_lookup and tc static keys not held ({}): the first pod's enrol and the last pod's removal "
                   "each patch kernel text", w.error().message);
    }
  }

  (void)netns::NetnsHandle::host();
  netns::NetnsExecutor executor(executor_threads);
  ropts.mark = protocol::kAgentMark;
  ropts.preserve_client_source = capture_mode == "bpf";
  std::unique_ptr<relay::AccessLog> access_log;
  if (access_log_target != "off") {
    auto l = relay::AccessLog::open(access_log_target);
    if (!l.ok()) {
      spdlog::critical("--access-log: {}", l.error().message);
      return 2;
    }
    access_log = std::move(*l);
    ropts.access_log = access_log.get();
  }
  ropts.balance_accepts = !no_accept_balance;
  auto relay = relay::Relay::start(ropts);
  if (!relay.ok()) {
    spdlog::critical("cannot start the relay: {}", relay.error().message);
    return 1;
  }
  // One thread for every captured UDP flow: DNS (unless --no-dns) and the pods' listed UDP ports.
  std::unique_ptr<udp::Proxy> udp_proxy;
  if (capture_mode == "bpf") {
    dopts.mark = protocol::kAgentMark;
    dopts.udp_idle_ms = udp_idle_s * 1000;
    if (!dns_upstream.empty()) {
      auto a = SockAddr::parse(dns_upstream, 53);
      if (!a.ok()) {
        spdlog::critical("--dns-upstream: {}", a.error().message);
        return 2;
      }
      dopts.dns_upstream = *a;
    }
    auto d = udp::Proxy::start(dopts);
    if (!d.ok()) {
      spdlog::critical("cannot start the UDP proxy: {}", d.error().message);
      return 1;
    }
    udp_proxy = std::move(*d);
  }
  std::unique_ptr<agent::KubeApiClient> kube_client;
  if (!kube_api.empty()) {
    if (kube_api == "in-cluster") {
      auto o = agent::kube_api_in_cluster();
      if (!o.ok()) {
        spdlog::critical("{}", o.error().message);
        return 2;
      }
      kube.server = o->server;
      if (kube.token_file.empty()) kube.token_file = o->token_file;
      if (kube.ca_file.empty()) kube.ca_file = o->ca_file;
    } else if (kube_api.rfind("https://", 0) == 0 || kube_api.rfind("http://", 0) == 0) {
      kube.server = kube_api;
      if (kube.token_file.empty()) {
        spdlog::critical("--kube-api {}: --kube-token-file is required", kube_api);
        return 2;
      }
    } else {
      spdlog::critical("--kube-api must be 'in-cluster' or an https:// URL, got '{}'", kube_api);
      return 2;
    }
    kube.timeout = std::chrono::milliseconds(kube_timeout_ms);
    kube_client = std::make_unique<agent::KubeApiClient>(kube);
    spdlog::info("pod labels from the Kubernetes API at {} (excludePodLabels)", kube.server);
  }
  protocol::ProxyHandoff proxy_defaults;
  proxy_defaults.pod_tlvs = proxy_pod_tlvs;
  for (auto [flag, from, to] : {std::tuple{"--proxy-outbound", &proxy_out, &proxy_defaults.outbound},
                                {"--proxy-inbound", &proxy_in, &proxy_defaults.inbound}}) {
    if (from->empty()) continue;
    auto a = SockAddr::parse(*from, 0);
    if (!a.ok() || a->port() == 0) {
      spdlog::critical("{}: ADDR:PORT or [V6]:PORT, got '{}'", flag, *from);
      return 2;
    }
    *to = *a;
  }
  agent::StateStore store(state_dir);
  agent::EnrolmentManager manager(executor, &store, agent::Dataplane{relay->get(), pin_root, tc_mode, capture_mode == "bpf", max_inbound_conns, udp_proxy.get(), !no_dns, dopts.dns_upstream, proxy_defaults, guard_attach == "deferred", guard_quiet_ms, bpf_spares, guard_pace});
  // Hitless upgrade: the running agent hands over its sockets; nothing is refused meanwhile.
  std::optional<agent::Handover> handover;
  if (takeover) {
    auto h = agent::request_handover(socket_path);
    if (h.ok()) {
      spdlog::info("--takeover: received {} pods and the control socket from the running agent", h->pods.size());
      handover = std::move(*h);
    } else if (h.error().code == ENOENT || h.error().code == ECONNREFUSED) {
      spdlog::info("--takeover: no agent running at {}; starting normally", socket_path);
    } else {
      spdlog::critical("--takeover: {} (the running agent keeps serving)", h.error().message);
      return 1;
    }
  }
  if (handover) {
    manager.adopt(std::move(handover->pods));
  } else if (auto recs = store.load(); recs.ok()) {
    // Take over what a dead agent left (pins, links and rules stayed in place: fail closed).
    manager.restore(*recs);
  } else {
    spdlog::error("{}; starting without previous state", recs.error().message);
    manager.restore({});
  }
  auto started = std::chrono::steady_clock::now();
  std::string metrics_bound;
  agent::RequestHandler handler(manager, [&] {
    auto s = manager.stats();
    return nlohmann::json{
        {"version", NETSTEER_VERSION},
        {"protocol", protocol::kVersion},
        {"pods", manager.size()},
        {"uptime_s", std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started).count()},
        {"netns_threads", executor.threads()},
        {"enrol_ok", s.enrol_ok},
        {"enrol_failed", s.enrol_failed},
        {"enrol_unchanged", s.enrol_noop},
        {"replaced", s.replaced},
        {"unenrolled", s.unenrolled},
        {"adopted", s.adopted},
        {"stale_cleaned", s.stale_cleaned},
        {"bpf_spare", manager.bpf_spare()},
        {"bpf_spares", manager.bpf_spares()},
        {"guard_attach", guard_attach},
        {"guards_pending", manager.guards_pending()},
        {"relay_workers", (*relay)->workers()},
        {"relay", (*relay)->stats()},
        {"relay_timeouts", (*relay)->timeouts()},
        {"udp_proxy", udp_proxy ? udp_proxy->options() : nlohmann::json()},
        {"dns_capture", udp_proxy && !no_dns},
        {"proxy", protocol::proxy_to_json(proxy_defaults)},
        {"access_log", access_log ? nlohmann::json{{"target", access_log->target()}, {"written", access_log->written()},
                                                   {"dropped", access_log->dropped()}, {"reopened", access_log->reopened()}}
                                  : nlohmann::json()},
        {"udp_inbound_capture", bpf::have_sk_lookup_ingress_ifindex()},
        {"max_inbound_connections", max_inbound_conns},
        {"tc_mode", bpf::to_string(tc_mode)},
        {"static_keys", warm ? warm->to_json() : nlohmann::json()},
        {"kernel", features.kernel_release},
        {"pid", ::getpid()},
        {"metrics", metrics_bound},
        {"kube_api", kube.server},
    };
  }, kube_client.get());
  agent::ControlOptions copts;
  copts.socket_path = socket_path;
  copts.allowed_uids = {allow_uids.begin(), allow_uids.end()};
  copts.client_idle_timeout = std::chrono::milliseconds(control_idle_ms);
  handler.set_conns([&](const std::string& uid) { return (*relay)->connections_json(uid); });
  agent::ControlServer server(copts, handler);
  if (auto st = handover ? server.serve_on(std::move(handover->control_listener), std::move(handover->control_clients)) : server.listen(); !st.ok()) {
    spdlog::critical("cannot listen on the control socket: {}", st.error().message);
    return 1;
  }
  // Metrics and health on TCP (host netns). Not fatal when the address is taken: the data path
  // does not depend on it, and the error says why scrapes fail.
  std::atomic<bool> ready{true};  // the control socket listens and the previous pods are taken over
  std::unique_ptr<metrics::HttpServer> http;
  auto start_metrics = [&] {
    if (metrics_addr.empty() || metrics_addr == "off") return;
    auto h = metrics::HttpServer::start(
        metrics_addr,
        [&] {
          return agent::render_node_metrics({&manager, server.clients(), server.rejected_peers(), NETSTEER_VERSION,
                                             features.kernel_release, bpf::to_string(tc_mode)});
        },
        [&] { return ready.load(); });
    if (h.ok()) {
      http = std::move(*h);
      metrics_bound = http->bound_address();
      spdlog::info("metrics on http://{}/metrics (/healthz, /readyz)", metrics_bound);
    } else {
      spdlog::error("metrics endpoint disabled: {}", h.error().message);
    }
  };
  start_metrics();
  if (handover) {
    // Every pod is served here now: the old agent may stop accepting and drain.
    if (auto st = agent::finish_handover(*handover); !st.ok())
      spdlog::warn("handover: could not tell the old agent to stop: {} (it keeps accepting too)", st.error().message);
    handover.reset();
  }
  server.set_lease([&](const protocol::Request& req, const std::string& holder) -> Result<agent::ControlServer::LeaseGrant> {
    NS_TRY(auto g, manager.lease(req, holder));
    return agent::ControlServer::LeaseGrant{
        std::move(g.data), std::move(g.fds),
        [&manager, uid = g.uid, id = g.id](const std::string& why) { manager.end_lease(uid, id, why); }};
  });
  server.set_handover([&](protocol::SeqpacketChannel& ch, int listen_fd, const std::vector<int>& clients) {
    spdlog::info("handover requested by a new agent");
    if (size_t n = manager.leases()) {
      // A lease is a live connection to this process: it cannot move to the new agent.
      std::string why = fmt::format("{} pod(s) have their listeners leased (netsteerctl exec): end the leases, then "
                                    "upgrade", n);
      spdlog::warn("handover refused: {}", why);
      protocol::Reply r;
      r.ok = false;
      r.error = why;
      r.err_no = EBUSY;
      (void)ch.send(protocol::encode_reply(r));
      return false;
    }
    auto pods = manager.export_pods();
    ready = false;
    http.reset();  // the metrics address goes to the new agent
    auto st = agent::send_handover(ch, pods, listen_fd, clients);
    if (!st.ok()) {
      spdlog::error("handover failed, still serving: {}", st.error().message);
      manager.resume_guards();
      ready = true;
      start_metrics();
      return false;
    }
    return true;
  });
  spdlog::info("netsteerd {} ready (pid {})", NETSTEER_VERSION, ::getpid());
  auto st = server.run();
  ready = false;
  http.reset();
  if (server.handed_over()) {
    // The new agent accepts on the same sockets and owns the state file and the pins. Keep
    // relaying what is established until it finishes, the drain timeout, or SIGTERM/SIGINT.
    manager.detach_store();
    (*relay)->stop_accepting();
    if (udp_proxy) udp_proxy->stop_accepting();  // its flows answer what is in flight
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(drain_timeout_s);
    auto in_flight = [&] { return (*relay)->connections() + (udp_proxy ? udp_proxy->pending_queries() : 0); };
    size_t left = in_flight();
    spdlog::info("handed over to the new agent; draining {} connections and DNS queries (at most {} s)", left,
                 drain_timeout_s);
    // In Kubernetes the old pod gets SIGTERM as soon as the new one is Ready: the drain goes on
    // (bounded by --drain-timeout-s and the pod's grace period); a second signal ends it now.
    timespec tick{0, 100 * 1000 * 1000};
    int signals = 0;
    while (left > 0 && std::chrono::steady_clock::now() < deadline) {
      if (::sigtimedwait(&set, nullptr, &tick) > 0) {
        if (++signals >= 2) break;
        spdlog::info("signal while draining {} connections: draining goes on; a second signal stops now", left);
      }
      left = in_flight();
    }
    spdlog::info("drained ({} connections left); exiting, capture stays with the new agent", left);
    manager.clear(false);
    return 0;
  }
  manager.clear(cleanup_on_exit);
  if (!st.ok()) {
    spdlog::critical("control loop failed: {}", st.error().message);
    return 1;
  }
  spdlog::info("netsteerd stopped");
  return 0;
}
