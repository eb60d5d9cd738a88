// netsteerctl: operator CLI for netsteerd (thin: parse, call the shared client, print).
#include <fcntl.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <iostream>

#include "netsteer/client/client.h"
#include "netsteer/common/unique_fd.h"
#include "netsteer/netns/netns.h"

using namespace netsteer;
using nlohmann::json;

namespace {

int fail(const std::string& msg) {
  std::fprintf(stderr, "netsteerctl: %s\n", msg.c_str());
  return 1;
}

std::string basename_of(const std::string& p) {
  auto s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

std::string join(const json& arr, const std::string& key = "") {
  std::string out;
  for (const auto& e : arr) {
    if (!out.empty()) out += ",";
    const json& v = key.empty() ? e : e[key];
    out += v.is_string() ? v.get<std::string>() : v.dump();
  }
  return out.empty() ? "-" : out;
}

void print_pods_table(const json& pods) {
  std::printf("%-28s %-20s %-24s %-12s %-28s %s\n", "UID", "NAMESPACE", "NAME", "NETNS_INO", "IPS", "LISTENERS");
  for (const auto& p : pods) {
    std::printf("%-28s %-20s %-24s %-12llu %-28s %s\n", p.value("uid", "").c_str(),
                p.value("namespace", "").c_str(), p.value("name", "").c_str(),
                static_cast<unsigned long long>(p.value("netns_ino", 0ULL)), join(p["ips"]).c_str(),
                join(p["listeners"], "port").c_str());
  }
}

std::string kv_line(const json& obj) {
  std::string out;
  for (const auto& [k, v] : obj.items()) out += (out.empty() ? "" : " ") + k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
  return out;
}

void print_inspect(const json& p) {
  std::printf("pod %s (%s/%s)\n", p.value("uid", "").c_str(), p.value("namespace", "").c_str(),
              p.value("name", "").c_str());
  std::printf("  netns:      ino %llu, cookie %llu, %s\n", static_cast<unsigned long long>(p.value("netns_ino", 0ULL)),
              static_cast<unsigned long long>(p.value("netns_cookie", 0ULL)), p.value("netns_path", "").c_str());
  std::printf("  ips:        %s\n", join(p["ips"]).c_str());
  std::printf("  listeners:  %s (%s)\n", join(p["listeners"], "port").c_str(),
              p["listeners"].empty() ? "-" : p["listeners"][0].value("family", "").c_str());
  std::printf("  exclusions: %s\n", kv_line(p.value("exclusions", json::object())).c_str());
  std::printf("  strict:     %s, enrolled in %.2f ms\n", p.value("strict", false) ? "yes" : "no", p.value("enrol_ms", 0.0));
  const json& c = p.contains("capture") ? p["capture"] : json();
  if (c.is_object()) {
    std::printf("capture: tc %s%s\n", c.value("tc_mode", "").c_str(), c.value("adopted", false) ? " (taken over)" : "");
    for (const auto& r : c["rules"]) std::printf("  ip %s\n", r.get<std::string>().c_str());
    for (const auto& r : c["routes"]) std::printf("  ip %s\n", r.get<std::string>().c_str());
    for (const auto& [k, v] : c["sysctls_changed"].items())
      std::printf("  sysctl %s (was %s)\n", k.c_str(), v.value("before", "").c_str());
    for (const auto& [k, v] : c["bpf"].items())
      if (v.is_object()) std::printf("  %-26s id %-6llu %s\n", k.c_str(), static_cast<unsigned long long>(v.value("id", 0ULL)), v.value("pin", "").c_str());
    if (c.contains("bpf_stats")) std::printf("  counters: %s\n", kv_line(c["bpf_stats"]).c_str());
  } else {
    std::printf("capture: not installed\n");
  }
  if (p.contains("relay") && p["relay"].is_object())
    for (const auto& [dir, v] : p["relay"].items()) std::printf("relay %-9s %s\n", dir.c_str(), kv_line(v).c_str());
}

// netsteerctl exec: takes the lease, lays the fds out as systemd does (listeners from fd 3 in the
// order asked, then the pod netns, then the lease connection, which CMD inherits: the lease lasts
// as long as CMD, or anything it passed the fd to, keeps it open) and execs CMD.
int exec_with_lease(const std::string& socket_path, int timeout_ms, const protocol::Request& req,
                    const std::vector<std::string>& cmd) {
  auto c = client::Client::connect(socket_path, std::chrono::milliseconds(timeout_ms));
  if (!c.ok()) return fail(c.error().message);
  auto g = std::move(*c).lease(req);
  if (!g.ok()) return fail(g.error().message);
  size_t n = req.listeners.size();
  if (g->fds.size() != n + 1) return fail("lease: the agent sent " + std::to_string(g->fds.size()) + " fds");
  // Order: listeners (3..3+n-1), netns (3+n), lease (3+n+1). Move everything out of that range
  // first, so that dup2 never overwrites an fd still to be placed.
  std::vector<int> want;
  for (size_t i = 1; i <= n; ++i) want.push_back(g->fds[i].get());
  want.push_back(g->fds[0].get());
  want.push_back(g->connection.get());
  std::vector<int> high;
  for (int fd : want) {
    int h = ::fcntl(fd, F_DUPFD_CLOEXEC, 3 + static_cast<int>(want.size()));
    if (h < 0) return fail(std::string("exec: fcntl: ") + std::strerror(errno));
    high.push_back(h);
  }
  for (size_t i = 0; i < high.size(); ++i)
    if (::dup2(high[i], 3 + static_cast<int>(i)) < 0) return fail(std::string("exec: dup2: ") + std::strerror(errno));
  const json& pod = g->reply.data["pod"];
  std::string names;
  for (const auto& l : req.listeners) names += (names.empty() ? "" : ":") + l;
  ::setenv("LISTEN_FDS", std::to_string(n).c_str(), 1);
  ::setenv("LISTEN_FDNAMES", names.c_str(), 1);
  ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);  // exec keeps the pid
  ::setenv("NETSTEER_POD_UID", pod.value("uid", "").c_str(), 1);
  ::setenv("NETSTEER_POD_NAMESPACE", pod.value("namespace", "").c_str(), 1);
  ::setenv("NETSTEER_POD_NAME", pod.value("name", "").c_str(), 1);
  ::setenv("NETSTEER_NETNS", pod.value("netns_path", "").c_str(), 1);
  ::setenv("NETSTEER_NETNS_FD", std::to_string(3 + n).c_str(), 1);
  ::setenv("NETSTEER_LEASE_FD", std::to_string(4 + n).c_str(), 1);
  std::vector<char*> argv;
  for (const auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  std::fprintf(stderr, "netsteerctl: exec %s: %s\n", argv[0], std::strerror(errno));
  return 127;  // the lease ends with this process
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"netsteerctl: inspect and manage netsteerd"};
  app.require_subcommand(1);
  std::string socket_path = client::kDefaultSocket;
  int timeout_ms = 10000;
  app.add_option("--socket", socket_path, "agent control socket")->capture_default_str();
  app.add_option("--timeout-ms", timeout_ms, "reply deadline")->capture_default_str();

  // Every subcommand first: the top-level help lists them, not their options.
  auto* enroll = app.add_subcommand("enroll", "enrol a pod netns by path (the CNI plugin's job, by hand)");
  auto* unenroll = app.add_subcommand("unenroll", "remove a pod's enrolment and everything it holds");
  auto* list = app.add_subcommand("list", "list enrolled pods");
  auto* status = app.add_subcommand("status", "agent status");
  auto* inspect = app.add_subcommand("inspect", "everything about one pod");
  auto* exec = app.add_subcommand(
      "exec", "run CMD with the pod's listeners (systemd socket activation: fds from 3, LISTEN_FDS, LISTEN_FDNAMES, "
              "LISTEN_PID); the agent stops accepting on them until CMD exits");
  auto* conns = app.add_subcommand("conns", "the connections being relayed now (the relay's ss)");
  auto* snapshot = app.add_subcommand("snapshot", "tell the agent which pods exist; it unenrols every other pod");
  // `netsteerctl --help` alone is printed before the subcommands' options are built (most of
  // what CLI11 costs here) and without the exception CLI11 throws to print it: the same text
  // (tests/unit/test_ctl_cli.cpp), at the exec floor (issue 17).
  if (const CLI::Option* help = app.get_help_ptr(); argc == 2 && help && help->check_name(argv[1])) {
    app.name(argv[0]);  // as parse() would name it
    std::fputs(app.help().c_str(), stdout);
    return 0;
  }

  protocol::PodSpec pod;
  std::string netns_path;
  std::vector<std::string> ips, ex_out_cidrs, ex_in_sources;
  std::vector<uint16_t> ex_in_ports, ex_out_ports;
  enroll->add_option("--netns", netns_path, "netns file, e.g. /var/run/netns/pod1")->required();
  enroll->add_option("--name", pod.name, "pod name");
  enroll->add_option("--namespace", pod.namespace_, "pod namespace");
  enroll->add_option("--uid", pod.uid, "pod uid (default: the netns file name)");
  enroll->add_option("--ip", ips, "pod IP (repeat; default: the agent discovers them)");
  enroll->add_option("--exclude-inbound-port", ex_in_ports, "pod port not captured inbound (repeat)");
  enroll->add_option("--exclude-outbound-port", ex_out_ports, "remote port not captured outbound (repeat)");
  enroll->add_option("--exclude-outbound-cidr", ex_out_cidrs, "remote prefix not captured outbound (repeat)");
  enroll->add_option("--exclude-inbound-source", ex_in_sources, "client prefix not captured inbound (repeat)");
  enroll->add_flag("--strict", pod.strict, "drop app TCP that leaves the pod without capture");
  enroll->add_flag("--no-dns", pod.no_dns, "do not capture the pod's DNS (UDP to port 53) onto 15053");
  enroll->add_option("--udp-outbound-port", pod.udp.outbound_ports,
                     "remote UDP port whose traffic goes through the agent (repeat; opt-in)");
  enroll->add_option("--udp-inbound-port", pod.udp.inbound_ports,
                     "pod UDP port whose inbound traffic goes through the agent (repeat; opt-in, Linux >= 5.17)");
  std::string proxy_out, proxy_in;
  enroll->add_option("--proxy-outbound", proxy_out,
                     "ADDR:PORT: send the pod's outbound connections to this proxy with a PROXY v2 header");
  enroll->add_option("--proxy-inbound", proxy_in,
                     "ADDR:PORT: send connections to the pod to this proxy with a PROXY v2 header");
  enroll->add_flag("--proxy-pod-tlvs", pod.proxy.pod_tlvs,
                   "put the pod's namespace/name (0xE0) and uid (0xE1) in the PROXY v2 header");
  std::string dns_upstream;
  enroll->add_option("--dns-upstream", dns_upstream,
                     "ADDR[:PORT]: answer the pod's DNS from this resolver (default: the agent's, else the server asked)");

  std::string un_uid, un_netns;
  auto* o1 = unenroll->add_option("--uid", un_uid, "pod uid");
  auto* o2 = unenroll->add_option("--netns", un_netns, "netns file of the pod");
  o1->excludes(o2);
  unenroll->require_option(1);

  bool as_json = false;
  list->add_flag("--json", as_json, "print JSON");
  status->add_flag("--json", as_json, "print JSON");
  std::string in_uid;
  inspect->add_option("--uid", in_uid, "pod uid")->required();
  inspect->add_flag("--json", as_json, "print JSON");

  std::string ex_uid, ex_name, ex_listeners = "outbound,inbound";
  int64_t ex_exempt = -1;
  std::vector<std::string> ex_cmd;
  auto* eu = exec->add_option("--uid", ex_uid, "pod uid");
  auto* en = exec->add_option("--name", ex_name, "pod as NAMESPACE/NAME");
  eu->excludes(en);
  exec->add_option("--listeners", ex_listeners, "comma list of outbound, inbound, tunnel")->capture_default_str();
  exec->add_option("--exempt-uid", ex_exempt, "connections of this uid from inside the pod skip capture (the proxy's own)")
      ->check(CLI::Range(int64_t{0}, int64_t{0xfffffffe}));
  exec->add_option("cmd", ex_cmd, "-- CMD ARGS...")->required();

  std::string conns_uid;
  conns->add_option("--uid", conns_uid, "only this pod's");
  conns->add_flag("--json", as_json, "print JSON");

  std::vector<std::string> snap_uids;
  bool all_gone = false;
  auto* su = snapshot->add_option("--uid", snap_uids, "uid of a pod that exists (repeat)");
  auto* sg = snapshot->add_flag("--none-exist", all_gone, "no pod exists: unenrol all");
  su->excludes(sg);
  snapshot->require_option(1);

  CLI11_PARSE(app, argc, argv);

  protocol::Request req;
  if (*enroll) {
    if (pod.uid.empty()) pod.uid = basename_of(netns_path);
    if (pod.name.empty()) pod.name = basename_of(netns_path);
    for (const auto& s : ips) {
      auto a = IpAddr::parse(s);
      if (!a.ok()) return fail(a.error().message);
      pod.ips.push_back(*a);
    }
    for (auto [from, to] : {std::pair{&ex_out_cidrs, &pod.exclusions.outbound_cidrs},
                            std::pair{&ex_in_sources, &pod.exclusions.inbound_sources}}) {
      for (const auto& s : *from) {
        auto p = Prefix::parse(s);
        if (!p.ok()) return fail(p.error().message);
        to->push_back(*p);
      }
    }
    pod.exclusions.inbound_ports = ex_in_ports;
    pod.exclusions.outbound_ports = ex_out_ports;
    pod.netns_path = netns_path;
    if (!dns_upstream.empty()) {
      auto a = SockAddr::parse(dns_upstream, 53);
      if (!a.ok()) return fail("--dns-upstream: " + a.error().message);
      pod.dns_upstream = *a;
    }
    for (auto [flag, from, to] : {std::tuple{"--proxy-outbound", &proxy_out, &pod.proxy.outbound},
                                  {"--proxy-inbound", &proxy_in, &pod.proxy.inbound}}) {
      if (from->empty()) continue;
      auto a = SockAddr::parse(*from, 0);
      if (!a.ok() || a->port() == 0) return fail(std::string(flag) + ": ADDR:PORT or [V6]:PORT, got '" + *from + "'");
      *to = *a;
    }
  } else if (*unenroll) {
    req.type = protocol::MsgType::kDel;
    if (!un_netns.empty()) {
      auto id = netns::netns_id_of_path(un_netns);
      if (!id.ok()) return fail(id.error().message);
      req.netns_ino = id->ino;
      req.netns_dev = id->dev;
    } else {
      req.uid = un_uid;
    }
  } else if (*list) {
    req.type = protocol::MsgType::kList;
  } else if (*status) {
    req.type = protocol::MsgType::kStatus;
  } else if (*inspect) {
    req.type = protocol::MsgType::kInspect;
    req.uid = in_uid;
  } else if (*snapshot) {
    req.type = protocol::MsgType::kSnapshot;
    req.uids = snap_uids;
  } else if (*conns) {
    req.type = protocol::MsgType::kConns;
    req.uid = conns_uid;
  } else if (*exec) {
    if (ex_uid.empty() == ex_name.empty()) return fail("exec: give --uid or --name");
    req.type = protocol::MsgType::kLease;
    req.uid = ex_uid;
    req.pod_name = ex_name;
    for (size_t b = 0; b <= ex_listeners.size();) {
      size_t e = ex_listeners.find(',', b);
      if (e == std::string::npos) e = ex_listeners.size();
      if (e > b) req.listeners.push_back(ex_listeners.substr(b, e - b));
      b = e + 1;
    }
    if (ex_exempt >= 0) req.exempt_uid = static_cast<uint32_t>(ex_exempt);
    return exec_with_lease(socket_path, timeout_ms, req, ex_cmd);
  }

  auto c = client::Client::connect(socket_path, std::chrono::milliseconds(timeout_ms));
  if (!c.ok()) return fail(c.error().message);
  auto r = *enroll ? c->add(pod) : c->call(req);
  if (!r.ok()) return fail(r.error().message);
  const json& d = r->data;

  if (*conns) {
    if (as_json) {
      std::cout << d["connections"].dump(2) << "\n";
    } else {
      std::printf("%-16s %-24s %-9s %-40s %-40s %-11s %8s %12s %12s\n", "ID", "POD", "DIR", "CLIENT", "DESTINATION",
                  "STATE", "AGE_S", "BYTES_UP", "BYTES_DOWN");
      for (const auto& c : d["connections"])
        std::printf("%-16s %-24s %-9s %-40s %-40s %-11s %8.1f %12llu %12llu\n", c.value("id", "").c_str(),
                    c.value("pod_uid", "").c_str(), c.value("direction", "").c_str(), c.value("client", "").c_str(),
                    c.value("destination", "").c_str(), c.value("state", "").c_str(), c.value("age_s", 0.0),
                    static_cast<unsigned long long>(c.value("bytes_up", 0ULL)),
                    static_cast<unsigned long long>(c.value("bytes_down", 0ULL)));
    }
    return 0;
  }
  if (*enroll) {
    std::printf("%s %s\n", d.value("result", "enrolled").c_str(), pod.uid.c_str());
  } else if (*unenroll) {
    std::printf("unenrolled\n");
  } else if (*list) {
    if (as_json) std::cout << d["pods"].dump(2) << "\n";
    else print_pods_table(d["pods"]);
  } else if (*status) {
    if (as_json) {
      std::cout << d["status"].dump(2) << "\n";
    } else {
      for (const auto& [k, v] : d["status"].items()) std::cout << k << ": " << v.dump() << "\n";
    }
  } else if (*inspect) {
    if (as_json) std::cout << d["pod"].dump(2) << "\n";
    else print_inspect(d["pod"]);
  } else if (*snapshot) {
    for (const auto& u : d.value("removed", json::array())) std::printf("unenrolled %s\n", u.get<std::string>().c_str());
  }
  return 0;
}
