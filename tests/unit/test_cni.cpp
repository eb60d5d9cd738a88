// netsteer-cni: netconf, prevResult, CNI_ARGS, env checks, error objects, installer edits.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <stdlib.h>
#include <unistd.h>

#include "netsteer/cni/cni.h"
#include "netsteer/cni/installer.h"
#include "netsteer/cni/trace.h"

using namespace netsteer;
using namespace netsteer::cni;
using nlohmann::json;

namespace {

json base() {
  return json::parse(R"({"cniVersion":"1.0.0","name":"k8s","type":"netsteer-cni",
    "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.2.3/24","interface":0},
                                              {"address":"fd00::3/64"}]}})");
}

int code_of(const json& j) {
  auto r = parse_netconf(j.dump());
  return r.ok() ? 0 : r.error().code;
}

}  // namespace

TEST(CniNetconf, ParsesDefaultsAndOptions) {
  json j = base();
  j["socketPath"] = "/run/x.sock";
  j["failurePolicy"] = "ignore";
  j["timeoutMs"] = 1500;
  j["strict"] = true;
  j["captureDns"] = false;
  j["dnsUpstream"] = "169.254.20.10";
  j["excludeInboundPorts"] = {15021, 9090};
  j["excludeOutboundPorts"] = {53};
  j["excludeOutboundCIDRs"] = {"10.96.0.0/12"};
  j["excludeInboundSources"] = {"169.254.1.1/32"};
  j["excludeNamespaces"] = {"kube-system"};
  j["udpOutboundPorts"] = {4789};
  j["udpInboundPorts"] = {7100, 7101};
  auto c = parse_netconf(j.dump());
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->socket_path, "/run/x.sock");
  EXPECT_EQ(c->failure_policy, FailurePolicy::kIgnore);
  EXPECT_EQ(c->timeout.count(), 1500);
  EXPECT_TRUE(c->strict);
  EXPECT_FALSE(c->capture_dns);
  ASSERT_TRUE(c->dns_upstream);
  EXPECT_EQ(c->dns_upstream->str(), "169.254.20.10:53");
  EXPECT_EQ(c->udp.outbound_ports, (std::vector<uint16_t>{4789}));
  EXPECT_EQ(c->udp.inbound_ports, (std::vector<uint16_t>{7100, 7101}));
  j["udpInboundPorts"] = {53};
  auto bad = parse_netconf(j.dump());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("udpInboundPorts"), std::string::npos) << bad.error().message;
  EXPECT_EQ(c->exclusions.inbound_ports, (std::vector<uint16_t>{9090, 15021}));  // normalised (sorted)
  EXPECT_EQ(c->exclusions.outbound_cidrs.at(0).str(), "10.96.0.0/12");
  EXPECT_EQ(c->exclusions.inbound_sources.at(0).str(), "169.254.1.1/32");
  auto ips = result_ips(c->prev_result);
  ASSERT_TRUE(ips.ok());
  ASSERT_EQ(ips->size(), 2u);
  EXPECT_EQ((*ips)[0].str(), "10.1.2.3");  // the interface address, not the network
  EXPECT_EQ((*ips)[1].str(), "fd00::3");

  auto d = parse_netconf(R"({"cniVersion":"1.1.0","name":"n","type":"netsteer-cni"})");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->socket_path, "/var/run/netsteer/cni.sock");
  EXPECT_EQ(d->failure_policy, FailurePolicy::kFail);
  EXPECT_TRUE(d->capture_dns);  // DNS is captured unless the netconf says otherwise
  EXPECT_FALSE(d->dns_upstream);
  EXPECT_TRUE(d->prev_result.is_null());
}

TEST(CniNetconf, BadInputGetsTheSpecCode) {
  EXPECT_EQ(parse_netconf("{not json").error().code, kDecodeFailure);
  EXPECT_EQ(parse_netconf("[1,2]").error().code, kDecodeFailure);
  json j = base();
  j["cniVersion"] = "9.9.9";
  EXPECT_EQ(code_of(j), kIncompatibleVersion);
  j = base();
  j.erase("cniVersion");
  EXPECT_EQ(code_of(j), kInvalidConfig);
  for (auto [k, v] : {std::pair<const char*, json>{"failurePolicy", "sometimes"}, {"timeoutMs", 0}, {"timeoutMs", "5"},
                      {"strict", "yes"}, {"excludeInboundPorts", json::array({70000})},
                      {"excludeOutboundCIDRs", json::array({"10.0.0.0/33"})}, {"excludeNamespaces", "kube-system"},
                      {"socketPath", ""}, {"prevResult", json::array()}}) {
    json b = base();
    b[k] = v;
    auto r = parse_netconf(b.dump());
    ASSERT_FALSE(r.ok()) << k;
    EXPECT_EQ(r.error().code, kInvalidConfig) << k;
  }
  j = base();
  j["prevResult"]["ips"] = json::array({json{{"address", "10.1.2.3"}}});  // no length
  EXPECT_EQ(code_of(j), kInvalidConfig);
  j["prevResult"]["ips"] = json::array({json{{"address", 7}}});
  EXPECT_EQ(code_of(j), kInvalidConfig);
}

TEST(CniArgs, AnyOrderAndErrors) {
  auto a = parse_cni_args("IgnoreUnknown=1;K8S_POD_UID=u-1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=prod");
  ASSERT_TRUE(a.ok());
  Env e{"ADD", "c0ffee", "/var/run/netns/x", "eth0", *a};
  EXPECT_EQ(e.pod_uid(), "u-1");
  EXPECT_EQ(e.pod_name(), "web-0");
  EXPECT_EQ(e.pod_namespace(), "prod");
  EXPECT_EQ(pod_key(e), "u-1");
  EXPECT_TRUE(parse_cni_args("").ok());
  EXPECT_EQ(parse_cni_args("A=1;garbage").error().code, kInvalidEnv);
  EXPECT_EQ(parse_cni_args("=x").error().code, kInvalidEnv);
  // Without K8S args the key comes from the container id and is a valid uid.
  Env bare{"ADD", "0123456789abcdef/../x", "/n", "eth0", {}};
  EXPECT_EQ(pod_key(bare), "c-0123456789abcdefx");
  EXPECT_TRUE(protocol::validate_uid(pod_key(bare)).ok());
}

TEST(CniEnv, RequiredPerCommand) {
  EXPECT_TRUE(validate_env({"ADD", "c", "/n", "eth0", {}}).ok());
  EXPECT_EQ(validate_env({"ADD", "c", "", "eth0", {}}).error().code, kInvalidEnv);
  EXPECT_TRUE(validate_env({"DEL", "c", "", "eth0", {}}).ok());  // DEL with an empty CNI_NETNS
  EXPECT_EQ(validate_env({"DEL", "", "", "", {}}).error().code, kInvalidEnv);
  EXPECT_TRUE(validate_env({"VERSION", "", "", "", {}}).ok());
  EXPECT_TRUE(validate_env({"STATUS", "", "", "", {}}).ok());
  EXPECT_EQ(validate_env({"FROB", "c", "/n", "eth0", {}}).error().code, kInvalidEnv);
  EXPECT_EQ(validate_env({"", "", "", "", {}}).error().code, kInvalidEnv);
}

TEST(CniSkip, NamespacesAndPodPatterns) {
  NetConf c;
  c.exclude_namespaces = {"kube-system"};
  c.exclude_pods = {"monitoring/prometheus-*", "*/debug"};
  auto env = [](std::string ns, std::string name) {
    return Env{"ADD", "c", "/n", "eth0", {{"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name}}};
  };
  EXPECT_TRUE(skipped(c, env("kube-system", "coredns")));
  EXPECT_TRUE(skipped(c, env("monitoring", "prometheus-0")));
  EXPECT_TRUE(skipped(c, env("prod", "debug")));
  EXPECT_FALSE(skipped(c, env("monitoring", "grafana")));
  EXPECT_FALSE(skipped(c, env("prod", "web")));
  EXPECT_TRUE(glob_match("a*b*c", "aXXbYc"));
  EXPECT_FALSE(glob_match("a*b*c", "aXXbY"));
}

TEST(CniError, SpecObject) {
  json e = json::parse(error_json("1.0.0", 11, "agent down", "start it"));
  EXPECT_EQ(e["cniVersion"], "1.0.0");
  EXPECT_EQ(e["code"], 11);
  EXPECT_EQ(e["msg"], "agent down");
  EXPECT_EQ(e["details"], "start it");
}

TEST(CniInstaller, ChainsLastAndIsIdempotent) {
  json bridge = json::parse(R"({"cniVersion":"1.0.0","name":"k8s","plugins":[
      {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}},{"type":"portmap"}]})");
  json plugin = {{"type", "netsteer-cni"}, {"socketPath", "/var/run/netsteer/cni.sock"}};
  auto once = with_plugin(bridge, plugin);
  ASSERT_TRUE(once.ok());
  ASSERT_EQ((*once)["plugins"].size(), 3u);
  EXPECT_EQ((*once)["plugins"][2]["type"], "netsteer-cni");
  EXPECT_EQ((*once)["plugins"][0], bridge["plugins"][0]);
  auto twice = with_plugin(*once, plugin);
  EXPECT_EQ(*twice, *once);
  EXPECT_EQ(without_plugin(*once, "netsteer-cni"), bridge);
  // A single-plugin .conf becomes a conflist.
  json single = json::parse(R"({"cniVersion":"0.4.0","name":"calico-like","type":"calico","ipam":{"type":"calico-ipam"}})");
  auto conv = with_plugin(single, plugin);
  ASSERT_TRUE(conv.ok());
  EXPECT_EQ((*conv)["name"], "calico-like");
  EXPECT_EQ((*conv)["cniVersion"], "0.4.0");
  EXPECT_EQ((*conv)["plugins"][0]["type"], "calico");
  EXPECT_FALSE((*conv)["plugins"][0].contains("name"));
  EXPECT_EQ((*conv)["plugins"][1]["type"], "netsteer-cni");
  EXPECT_FALSE(with_plugin(json::parse(R"({"name":"x"})"), plugin).ok());
  EXPECT_FALSE(with_plugin(json::parse(R"({"plugins":[]})"), plugin).ok());
}

TEST(CniInstaller, InstallsIntoTheActiveConfAndUninstalls) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("netsteer-cni-test-" + std::to_string(::getpid()));
  fs::create_directories(dir / "net.d");
  fs::create_directories(dir / "bin");
  auto write = [](const fs::path& p, const std::string& s) { std::ofstream(p) << s; };
  auto read = [](const fs::path& p) {
    std::ifstream f(p);
    return json::parse(f);
  };
  write(dir / "net.d" / "20-other.conflist", R"({"cniVersion":"1.0.0","name":"other","plugins":[{"type":"ptp"}]})");
  write(dir / "net.d" / "10-calico.conf", R"({"cniVersion":"0.4.0","name":"k8s-pod-network","type":"calico"})");
  write(dir / "net.d" / "05-broken.conflist", "{oops");
  write(dir / "self", "#!/bin/sh\n");
  InstallOptions o{(dir / "bin").string(), (dir / "net.d").string(), {{"type", "netsteer-cni"}}, (dir / "self").string()};
  auto r = install(o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(fs::path(*r).filename(), "10-calico.conflist");
  EXPECT_FALSE(fs::exists(dir / "net.d" / "10-calico.conf"));
  EXPECT_EQ(read(*r)["plugins"].back()["type"], "netsteer-cni");
  EXPECT_EQ(read(dir / "net.d" / "20-other.conflist")["plugins"].size(), 1u);
  EXPECT_TRUE(fs::exists(dir / "bin" / "netsteer-cni"));
  EXPECT_TRUE((fs::status(dir / "bin" / "netsteer-cni").permissions() & fs::perms::owner_exec) != fs::perms::none);
  auto again = install(o);  // idempotent
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(read(*again)["plugins"].size(), 2u);
  ASSERT_TRUE(uninstall((dir / "bin").string(), (dir / "net.d").string()).ok());
  EXPECT_EQ(read(*r)["plugins"].size(), 1u);
  EXPECT_EQ(read(*r)["plugins"][0]["type"], "calico");
  EXPECT_FALSE(fs::exists(dir / "bin" / "netsteer-cni"));
  fs::remove_all(dir);
  // No config at all: a clear error.
  fs::create_directories(dir / "empty");
  auto none = install({(dir / "bin").string(), (dir / "empty").string(), {{"type", "netsteer-cni"}}, ""});
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("no CNI network config"), std::string::npos);
  fs::remove_all(dir);
}

// The start-up profile's trace: one whole JSON line per run, the marks in order, and no file at
// all unless NETSTEER_CNI_TRACE names one.
TEST(CniTrace, AppendsOneLinePerRunOnlyWhenAsked) {
  auto dir = std::filesystem::temp_directory_path() / ("netsteer-trace-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = dir / "trace.jsonl";
  ::unsetenv("NETSTEER_CNI_TRACE");
  trace::mark(trace::kMain);
  trace::write("c0");
  EXPECT_FALSE(std::filesystem::exists(path));

  ::setenv("NETSTEER_CNI_TRACE", path.c_str(), 1);
  for (int run = 0; run < 2; ++run) {
    for (int m = 0; m < trace::kMarks; ++m) trace::mark(static_cast<trace::Mark>(m));
    trace::write(run == 0 ? "c\"1\\" : "c2");
  }
  ::unsetenv("NETSTEER_CNI_TRACE");
  std::ifstream in(path);
  std::vector<json> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(json::parse(l));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["id"], "c\"1\\");  // quotes and backslashes escaped: the id round-trips
  EXPECT_EQ(lines[1]["id"], "c2");
  for (const auto& j : lines) {
    EXPECT_GT(j["main"].get<uint64_t>(), 0u);
    EXPECT_LE(j["main"].get<uint64_t>(), j["connect"].get<uint64_t>());
    EXPECT_LE(j["connect"].get<uint64_t>(), j["reply"].get<uint64_t>());
    EXPECT_LE(j["reply"].get<uint64_t>(), j["end"].get<uint64_t>());
  }
  EXPECT_LE(lines[0]["end"].get<uint64_t>(), lines[1]["main"].get<uint64_t>());
  std::filesystem::remove_all(dir);
}

// The binary itself marks and writes: a VERSION run (no agent) leaves one line with its start and
// end and no connect.
TEST(CniTrace, TheBinaryWritesItsLine) {
  auto dir = std::filesystem::temp_directory_path() / ("netsteer-trace-bin-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto path = dir / "trace.jsonl";
  std::string cmd = "NETSTEER_CNI_TRACE=" + path.string() + " CNI_COMMAND=VERSION CNI_CONTAINERID=ctr-7 " +
                    NETSTEER_CNI_BIN + " </dev/null >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream in(path);
  std::string l;
  ASSERT_TRUE(std::getline(in, l)) << "no trace line from " << NETSTEER_CNI_BIN;
  json j = json::parse(l);
  EXPECT_EQ(j["id"], "ctr-7");
  EXPECT_GT(j["main"].get<int64_t>(), 0);
  EXPECT_EQ(j["connect"].get<int64_t>(), 0);
  EXPECT_GE(j["end"].get<int64_t>(), j["main"].get<int64_t>());
  EXPECT_FALSE(std::getline(in, l));
  std::filesystem::remove_all(dir);
}
