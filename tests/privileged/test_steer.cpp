// sk_lookup steering in a real pod netns: inbound SYNs land on the 15006 listener, the original
// destination is kept, the relay's bypass reaches the app, and a gone listener fails closed.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "netsteer/agent/listeners.h"
#include "netsteer/bpf/pod_bpf.h"
#include "netsteer/netns/netns.h"

using namespace netsteer;

namespace {

void sh(const std::string& cmd) { ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd; }

class SteerTest : public ::testing::Test {
 protected:
  std::string tag = std::to_string(::getpid());
  std::string pod = "nsstp" + tag, rem = "nsstr" + tag;
  std::string pins = "/sys/fs/bpf/netsteer-gtest-" + tag;

  void SetUp() override {
    if (::geteuid() != 0) {
      if (const char* ci = std::getenv("CI"); ci && std::string(ci) == "true")
        FAIL() << "privileged test needs root and CI=true: refusing to skip";
      GTEST_SKIP() << "needs root";
    }
    ASSERT_TRUE(bpf::ensure_bpffs().ok());
    auto f = bpf::probe_features();
    ASSERT_TRUE(bpf::require_capture_features(f).ok());
    sh("ip netns add " + pod + " && ip netns add " + rem);
    sh("ip link add vst" + tag + " netns " + pod + " type veth peer name eth0 netns " + rem);
    sh("ip -n " + pod + " link set vst" + tag + " name eth0");
    sh("ip -n " + pod + " addr add 10.77.0.1/24 dev eth0 && ip -n " + pod + " link set eth0 up && ip -n " + pod +
       " link set lo up");
    sh("ip -n " + rem + " addr add 10.77.0.2/24 dev eth0 && ip -n " + rem + " link set eth0 up");
  }
  void TearDown() override {
    std::system(("ip netns del " + pod + " 2>/dev/null; ip netns del " + rem + " 2>/dev/null").c_str());
    std::filesystem::remove_all(pins);
  }

  netns::NetnsHandle ns(const std::string& name) { return std::move(*netns::NetnsHandle::open("/var/run/netns/" + name)); }

  // Non-blocking connect from the remote netns; returns the fd and whether it completed in time.
  std::pair<UniqueFd, bool> connect_from_remote(uint16_t port, uint16_t bind_port = 0, int wait_ms = 2000) {
    auto rns = ns(rem);
    UniqueFd fd;
    {
      auto scope = netns::ScopedNetns::enter(rns);
      EXPECT_TRUE(scope.ok());
      fd.reset(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    }
    if (bind_port) {
      SockAddr b = SockAddr::make(*IpAddr::parse("10.77.0.2"), bind_port);
      EXPECT_EQ(::bind(fd.get(), b.sa(), b.len), 0);
    }
    SockAddr dst = SockAddr::make(*IpAddr::parse("10.77.0.1"), port);
    ::connect(fd.get(), dst.sa(), dst.len);
    pollfd p{fd.get(), POLLOUT, 0};
    bool done = ::poll(&p, 1, wait_ms) == 1;
    int err = 0;
    socklen_t l = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &l);
    return {std::move(fd), done && err == 0};
  }

  // The pod netns with the agent's listeners and the pod's app on 8080 in it.
  struct PodWithApp {
    netns::NetnsHandle ns;
    agent::PodListeners listeners;
    UniqueFd app;
  };
  Result<PodWithApp> pod_with_app() {
    auto pns = ns(pod);
    netns::NetnsExecutor exec(1);
    NS_TRY(agent::PodListeners listeners, exec.run(pns, [] { return agent::create_listeners(0x539, {}); }));
    NS_TRY(UniqueFd app, exec.run(pns, []() -> Result<UniqueFd> {
      UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      SockAddr a = SockAddr::make(*IpAddr::parse("0.0.0.0"), 8080);
      int one = 1;
      ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(fd.get(), a.sa(), a.len) < 0 || ::listen(fd.get(), 16) < 0) return Error::from_errno(errno, "app");
      return fd;
    }));
    return PodWithApp{std::move(pns), std::move(listeners), std::move(app)};
  }

  static UniqueFd accept_one(int lfd, int wait_ms = 2000) {
    pollfd p{lfd, POLLIN, 0};
    if (::poll(&p, 1, wait_ms) != 1) return UniqueFd();
    return UniqueFd(::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC));
  }
};

}  // namespace

TEST_F(SteerTest, InboundSteeredBypassAndFailClosed) {
  auto p = pod_with_app();
  ASSERT_TRUE(p.ok()) << p.error().message;
  auto& pns = p->ns;
  auto* listeners = &p->listeners;
  auto* app = &p->app;

  bpf::PodBpfConfig cfg;
  cfg.pod_ips = {*IpAddr::parse("10.77.0.1")};
  auto loaded = bpf::LoadedPodBpf::load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  auto sp = bpf::PodBpf::create(pins + "/pod", pns, cfg, std::move(*loaded));
  ASSERT_TRUE(sp.ok()) << sp.error().message;
  ASSERT_TRUE((*sp)->set_listeners(listeners->outbound.fd.get(), listeners->inbound.fd.get()).ok());
  for (const char* pin : {"prog_steer", "link_steer", "map_ns_sockets", "map_ns_stats", "map_ns_bypass",
                          "prog_guard_ingress", "prog_guard_egress", "map_ns_guard_stats", "map_ns_config"})
    EXPECT_TRUE(std::filesystem::exists(pins + "/pod/" + pin)) << pin;

  // 1. Inbound to the app's port lands on 15006, with the original destination kept.
  auto [c1, ok1] = connect_from_remote(8080);
  ASSERT_TRUE(ok1);
  UniqueFd a1 = accept_one(listeners->inbound.fd.get());
  ASSERT_TRUE(a1.valid()) << "15006 did not get the connection";
  SockAddr orig;
  orig.len = sizeof orig.ss;
  ASSERT_EQ(::getsockname(a1.get(), orig.sa(), &orig.len), 0);
  EXPECT_EQ(orig.ip().unmapped().str(), "10.77.0.1");
  EXPECT_EQ(orig.port(), 8080);
  EXPECT_FALSE(accept_one(app->get(), 100).valid()) << "the app got a captured connection";
  EXPECT_EQ((*sp)->stats()->inbound_assigned, 1u);

  // 2. The relay's bypass entry lets its own socket through to the app.
  ASSERT_TRUE((*sp)->add_bypass(SockAddr::make(*IpAddr::parse("10.77.0.2"), 40123)).ok());
  auto [c2, ok2] = connect_from_remote(8080, 40123);
  ASSERT_TRUE(ok2);
  EXPECT_TRUE(accept_one(app->get()).valid()) << "bypassed connection did not reach the app";
  EXPECT_EQ((*sp)->stats()->passed_bypass, 1u);
  // The trie matches the whole key: the next port of the same client is captured.
  auto [c2n, ok2n] = connect_from_remote(8080, 40124);
  ASSERT_TRUE(ok2n);
  EXPECT_TRUE(accept_one(listeners->inbound.fd.get()).valid()) << "a port next to a bypass entry was not captured";
  EXPECT_EQ((*sp)->stats()->inbound_assigned, 2u);
  EXPECT_EQ((*sp)->stats()->passed_bypass, 1u);
  ASSERT_TRUE((*sp)->remove_bypass(SockAddr::make(*IpAddr::parse("10.77.0.2"), 40123)).ok());
  auto left = (*sp)->clear_bypass();
  ASSERT_TRUE(left.ok()) << left.error().message;
  EXPECT_EQ(*left, 0u) << "remove_bypass left the entry";

  // 3. Listener gone (agent crashed): the SYN is dropped in BPF, never delivered to the app.
  *listeners = agent::PodListeners{};
  auto [c3, ok3] = connect_from_remote(8080, 0, 500);
  EXPECT_FALSE(ok3) << "connection completed without a listener";
  EXPECT_FALSE(accept_one(app->get(), 100).valid()) << "fail-open: the app got the connection";
  EXPECT_GE((*sp)->stats()->drop_no_listener, 1u);

  // 4. destroy() detaches the link and removes every pin.
  ASSERT_TRUE((*sp)->verify().ok());
  uint32_t link_id = (*sp)->steer_link_id();
  ASSERT_NE(link_id, 0u);
  ASSERT_TRUE((*sp)->destroy().ok());
  EXPECT_FALSE(std::filesystem::exists(pins + "/pod"));
  sp->reset();
  int lfd = bpf_link_get_fd_by_id(link_id);
  EXPECT_LT(lfd, 0) << "link still exists after destroy";
  if (lfd >= 0) ::close(lfd);
  // With the link gone the app is reachable directly again.
  auto [c4, ok4] = connect_from_remote(8080);
  EXPECT_TRUE(ok4);
  EXPECT_TRUE(accept_one(app->get()).valid());
}

// Pods an agent from before the trie enrolled have a hash map keyed by ns_sock_key: a new agent
// that adopts them puts its entries there in that layout, and refuses a map it does not know.
TEST_F(SteerTest, AdoptedPinsOfAnOlderAgentKeepTheirBypassHashMap) {
  auto pns = ns(pod);
  auto loaded = bpf::LoadedPodBpf::load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  bpf::PodBpfConfig cfg;
  cfg.pod_ips = {*IpAddr::parse("10.77.0.1")};
  auto sp = bpf::PodBpf::create(pins + "/pod", pns, cfg, std::move(*loaded));
  ASSERT_TRUE(sp.ok()) << sp.error().message;
  const std::string pin = pins + "/pod/map_ns_bypass";
  auto replace_pin = [&](bpf_map_type type, uint32_t key_size) {
    LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = BPF_F_NO_PREALLOC);
    UniqueFd m(::bpf_map_create(type, "ns_bypass", key_size, 1, 64, type == BPF_MAP_TYPE_HASH ? &o : nullptr));
    EXPECT_TRUE(m.valid()) << std::strerror(errno);
    std::filesystem::remove(pin);
    EXPECT_EQ(::bpf_obj_pin(m.get(), pin.c_str()), 0) << std::strerror(errno);
    return m;
  };
  UniqueFd legacy = replace_pin(BPF_MAP_TYPE_HASH, sizeof(ns_sock_key));
  auto adopted = bpf::PodBpf::adopt(pins + "/pod");
  ASSERT_TRUE(adopted.ok()) << adopted.error().message;
  SockAddr a = SockAddr::make(*IpAddr::parse("10.77.0.2"), 40123);
  ASSERT_TRUE((*adopted)->add_bypass(a).ok());
  ns_sock_key k{};
  std::memcpy(k.addr.bytes, a.ip().v6_mapped().bytes.data(), 16);
  k.port = 40123;
  uint8_t v = 0;
  EXPECT_EQ(::bpf_map_lookup_elem(legacy.get(), &k, &v), 0) << "entry not in the old layout";
  EXPECT_EQ(v, 1);
  auto n = (*adopted)->clear_bypass();
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);
  // Full (64 entries here): the hash's E2BIG reaches the relay as ENOSPC, as from the trie.
  for (uint16_t port = 1; port <= 64; ++port)
    ASSERT_TRUE((*adopted)->add_bypass(SockAddr::make(a.ip(), port)).ok()) << port;
  auto full = (*adopted)->add_bypass(SockAddr::make(a.ip(), 65));
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.error().code, ENOSPC) << full.error().message;
  adopted->reset();

  UniqueFd unknown = replace_pin(BPF_MAP_TYPE_ARRAY, 4);
  auto refused = bpf::PodBpf::adopt(pins + "/pod");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("not one this agent knows"), std::string::npos) << refused.error().message;
  ASSERT_TRUE((*sp)->destroy().ok());
}

// The agent's spare: loaded ahead of time (holding its fds), refilled only when empty, and a
// preloaded object steers exactly like one loaded during the enrol.
TEST_F(SteerTest, PoolSpareIsLoadedOnceAndSteers) {
  auto fds = [] {
    size_t n = 0;
    for (auto& e : std::filesystem::directory_iterator("/proc/self/fd")) (void)e, ++n;
    return n;
  };
  auto pns = ns(pod);
  netns::NetnsExecutor exec(1);
  auto listeners = exec.run(pns, [] { return agent::create_listeners(0x539, {}); });
  ASSERT_TRUE(listeners.ok()) << listeners.error().message;

  bpf::PodBpfPool pool;
  size_t empty = fds();
  pool.refill();
  size_t with_spare = fds();
  EXPECT_GT(with_spare, empty) << "refill() loaded nothing";
  pool.refill();
  EXPECT_EQ(fds(), with_spare) << "a second refill() loaded another spare";

  auto loaded = pool.take();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  bpf::PodBpfConfig cfg;
  cfg.pod_ips = {*IpAddr::parse("10.77.0.1")};
  auto sp = bpf::PodBpf::create(pins + "/pod", pns, cfg, std::move(*loaded));
  ASSERT_TRUE(sp.ok()) << sp.error().message;
  ASSERT_TRUE((*sp)->set_listeners(listeners->outbound.fd.get(), listeners->inbound.fd.get()).ok());
  auto [c, ok] = connect_from_remote(8080);
  ASSERT_TRUE(ok);
  EXPECT_TRUE(accept_one(listeners->inbound.fd.get()).valid()) << "preloaded program did not steer";
  EXPECT_EQ((*sp)->stats()->inbound_assigned, 1u);

  {
    // With the spare taken, take() loads inline (closed at the end of this scope).
    auto inline_loaded = pool.take();
    ASSERT_TRUE(inline_loaded.ok()) << inline_loaded.error().message;
  }
  ASSERT_TRUE((*sp)->destroy().ok());
  sp->reset();
  c.reset();
  listeners = agent::PodListeners{};
  EXPECT_EQ(fds(), empty - 3) << "fds left behind (the listeners' three were open before)";
}

// A pool of several spares: refill() fills it, take() hands the loaded ones out first. A
// background pool starts at the first request() and from then on refills itself after every take(),
// on a loader thread that runs SCHED_IDLE (it must never delay an enrol or the CNI plugin).
TEST_F(SteerTest, PoolKeepsSeveralSparesAndRefillsOnAnIdleThread) {
  {
    bpf::PodBpfPool pool(bpf::kDefaultMaxInboundConns, false, 3);
    EXPECT_EQ(pool.state(), "none");
    pool.refill();
    EXPECT_EQ(pool.spares(), 3u);
    EXPECT_EQ(pool.state(), "ready");
    ASSERT_TRUE(pool.take().ok());
    EXPECT_EQ(pool.spares(), 2u);
    pool.refill();
    EXPECT_EQ(pool.spares(), 3u);
  }
  auto wait_full = [](bpf::PodBpfPool& pool, size_t n) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while ((pool.state() != "ready" || pool.spares() != n) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return pool.spares() == n && pool.state() == "ready";
  };
  auto idle_threads = [] {
    size_t n = 0;
    for (auto& e : std::filesystem::directory_iterator("/proc/self/task"))
      n += ::sched_getscheduler(std::stoi(e.path().filename().string())) == SCHED_IDLE;
    return n;
  };
  bpf::PodBpfPool pool(bpf::kDefaultMaxInboundConns, true, 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(pool.spares(), 0u) << "loaded before the first request()";
  EXPECT_EQ(pool.state(), "none");
  pool.request();
  ASSERT_TRUE(wait_full(pool, 2)) << "the background pool did not fill: " << pool.state() << " " << pool.spares();
  EXPECT_EQ(idle_threads(), 1u) << "the loader thread does not run SCHED_IDLE";
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(pool.take().ok());  // the third one inline, or a refill
  EXPECT_TRUE(wait_full(pool, 2)) << "take() did not make the pool refill itself";
  // While an enrol holds the pool, the loader loads nothing; the release lets it refill.
  pool.hold();
  pool.hold();
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(pool.take().ok());
  pool.release();  // one enrol is still running
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // ~100 loads' time
  EXPECT_EQ(pool.spares(), 0u) << "the loader loaded while an enrol held the pool";
  EXPECT_EQ(pool.state(), "loading");
  pool.release();
  EXPECT_TRUE(wait_full(pool, 2)) << "the release did not let the loader refill";
}

// A pod loaded without its guard programs (deferred tcx guards): nothing of the guard is pinned
// until load_guard() (or the attacher's LoadedGuard + adopt_guard_progs) loads it on the pod's
// own maps; attach_guard() loads it itself.
TEST_F(SteerTest, GuardProgramsAreLoadedWhenNeeded) {
  auto pns = ns(pod);
  auto loaded = bpf::LoadedPodBpf::load(bpf::kDefaultMaxInboundConns, false);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  bpf::PodBpfConfig cfg;
  cfg.pod_ips = {*IpAddr::parse("10.77.0.1")};
  auto sp = bpf::PodBpf::create(pins + "/lazy", pns, cfg, std::move(*loaded));
  ASSERT_TRUE(sp.ok()) << sp.error().message;
  EXPECT_FALSE((*sp)->guard_loaded());
  EXPECT_FALSE(std::filesystem::exists(pins + "/lazy/prog_guard_ingress"));
  EXPECT_FALSE((*sp)->guard_prog(true).ok());
  auto maps = bpf::PodBpf::guard_maps(pins + "/lazy");
  ASSERT_TRUE(maps.ok()) << maps.error().message;
  auto guard = bpf::LoadedGuard::load(maps->view);
  ASSERT_TRUE(guard.ok()) << guard.error().message;
  ASSERT_TRUE((*sp)->adopt_guard_progs(*guard).ok());
  EXPECT_TRUE((*sp)->guard_loaded());
  for (const char* pin : {"prog_guard_ingress", "prog_guard_egress", "map_ns_guard_stats"})
    EXPECT_TRUE(std::filesystem::exists(pins + "/lazy/" + pin)) << pin;
  // The guard reads the pod's maps: its programs reference the pod's config map.
  bpf_prog_info info{};
  uint32_t len = sizeof info, map_ids[16] = {}, n = 16;
  info.nr_map_ids = n;
  info.map_ids = reinterpret_cast<uint64_t>(map_ids);
  auto prog = (*sp)->guard_prog(false);
  ASSERT_TRUE(prog.ok());
  ASSERT_EQ(bpf_obj_get_info_by_fd(prog->get(), &info, &len), 0);
  bpf_map_info mi{};
  uint32_t mlen = sizeof mi;
  UniqueFd cfg_map(bpf_obj_get((pins + "/lazy/map_ns_config").c_str()));
  ASSERT_TRUE(cfg_map.valid());
  ASSERT_EQ(bpf_obj_get_info_by_fd(cfg_map.get(), &mi, &mlen), 0);
  EXPECT_NE(std::find(map_ids, map_ids + info.nr_map_ids, mi.id), map_ids + info.nr_map_ids);
  ASSERT_TRUE((*sp)->destroy().ok());

  // load_guard() (what attach_guard() calls first) does the same from the pod's own pins.
  auto loaded2 = bpf::LoadedPodBpf::load(bpf::kDefaultMaxInboundConns, false);
  ASSERT_TRUE(loaded2.ok()) << loaded2.error().message;
  auto sp2 = bpf::PodBpf::create(pins + "/lazy2", pns, cfg, std::move(*loaded2));
  ASSERT_TRUE(sp2.ok()) << sp2.error().message;
  EXPECT_FALSE((*sp2)->guard_loaded());
  ASSERT_TRUE((*sp2)->load_guard().ok());
  EXPECT_TRUE((*sp2)->guard_loaded());
  EXPECT_TRUE(std::filesystem::exists(pins + "/lazy2/prog_guard_egress"));
  ASSERT_TRUE((*sp2)->destroy().ok());
}

TEST(SteerFeatures, ProbeNamesTheMissingFeature) {
  bpf::Features f;
  f.kernel_release = "5.4.0-test";
  f.sk_lookup = false;
  f.sched_cls = true;
  auto st = bpf::require_capture_features(f);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("sk_lookup"), std::string::npos);
  EXPECT_NE(st.error().message.find("5.9"), std::string::npos);
  EXPECT_NE(st.error().message.find("5.4.0-test"), std::string::npos);
}

// The steering program is loaded for the features a pod uses (read-only data the verifier prunes
// on): fewer instructions to verify for a plain pod, a pod is never given a copy that lacks one of
// its features, and the pool hands out spares by feature set.
TEST_F(SteerTest, ProgramIsLoadedForThePodsFeatures) {
  auto p = pod_with_app();
  ASSERT_TRUE(p.ok()) << p.error().message;
  auto& pns = p->ns;
  auto* listeners = &p->listeners;
  auto* app = &p->app;
  bpf::PodBpfConfig plain;
  plain.pod_ips = {*IpAddr::parse("10.77.0.1")};
  plain.dns = true;
  bpf::PodBpfConfig excluding = plain;
  excluding.exclusions.inbound_ports = {8080};
  ASSERT_EQ(bpf::pod_features(plain), uint32_t(NS_CFG_DNS));
  ASSERT_EQ(bpf::pod_features(excluding), uint32_t(NS_CFG_DNS | NS_CFG_EX_IN_PORT));

  auto verified_insns = [&](const std::string& dir) {
    UniqueFd p(bpf_obj_get((dir + "/prog_steer").c_str()));
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    EXPECT_EQ(bpf_obj_get_info_by_fd(p.get(), &info, &len), 0);
    return info.verified_insns;
  };
  // A copy without the exclusion feature is refused for the excluding pod.
  auto narrow = bpf::LoadedPodBpf::load(bpf::kDefaultMaxInboundConns, false, bpf::pod_features(plain));
  ASSERT_TRUE(narrow.ok()) << narrow.error().message;
  auto refused = bpf::PodBpf::create(pins + "/refused", pns, excluding, std::move(*narrow));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, EINVAL);
  EXPECT_FALSE(std::filesystem::exists(pins + "/refused"));

  // The excluding pod's own copy honours the exclusion, and verified fewer instructions than one
  // serving every feature (which a plain pod's would, fewer still).
  auto fitted = bpf::LoadedPodBpf::load(bpf::kDefaultMaxInboundConns, false, bpf::pod_features(excluding));
  ASSERT_TRUE(fitted.ok()) << fitted.error().message;
  auto sp = bpf::PodBpf::create(pins + "/pod", pns, excluding, std::move(*fitted));
  ASSERT_TRUE(sp.ok()) << sp.error().message;
  ASSERT_TRUE((*sp)->set_listeners(listeners->outbound.fd.get(), listeners->inbound.fd.get()).ok());
  auto [c1, ok1] = connect_from_remote(8080);
  ASSERT_TRUE(ok1);
  EXPECT_TRUE(accept_one(app->get()).valid()) << "the excluded port was captured";
  EXPECT_EQ((*sp)->stats()->passed_excluded, 1u);
  auto all = bpf::LoadedPodBpf::load(bpf::kDefaultMaxInboundConns, false);
  ASSERT_TRUE(all.ok());
  auto sp_all = bpf::PodBpf::create(pins + "/all", pns, plain, std::move(*all));
  ASSERT_TRUE(sp_all.ok()) << sp_all.error().message;
  auto plain_loaded = bpf::LoadedPodBpf::load(bpf::kDefaultMaxInboundConns, false, bpf::pod_features(plain));
  ASSERT_TRUE(plain_loaded.ok());
  auto sp_plain = bpf::PodBpf::create(pins + "/plain", pns, plain, std::move(*plain_loaded));
  ASSERT_TRUE(sp_plain.ok()) << sp_plain.error().message;
  uint32_t n_all = verified_insns(pins + "/all"), n_excl = verified_insns(pins + "/pod"),
           n_plain = verified_insns(pins + "/plain");
  EXPECT_LT(n_excl, n_all);
  EXPECT_LT(n_plain, n_excl);
  EXPECT_LT(n_plain * 2, n_all) << "a plain pod's copy should verify well under half: " << n_plain << " vs " << n_all;
  // A guard loaded later (deferred, or after a restart) serves what the pinned config says.
  auto gm = bpf::PodBpf::guard_maps(pins + "/pod");
  ASSERT_TRUE(gm.ok()) << gm.error().message;
  EXPECT_EQ(gm->features, bpf::pod_features(excluding));
  for (auto* p : {&*sp, &*sp_all, &*sp_plain}) ASSERT_TRUE((*p)->destroy().ok());

  // The pool: spares are first loaded for every feature, then for what the last pod needed; a
  // spare that serves no new pod makes room, and that pod's copy is loaded inline for it.
  bpf::PodBpfPool pool(bpf::kDefaultMaxInboundConns, false, 2, false);
  pool.refill();
  ASSERT_EQ(pool.spares(), 2u);
  auto t1 = pool.take(NS_CFG_DNS);
  ASSERT_TRUE(t1.ok());
  EXPECT_EQ(t1->features(), bpf::kAllPodFeatures);
  pool.refill();  // one spare for every feature, one for DNS only
  ASSERT_EQ(pool.spares(), 2u);
  auto t2 = pool.take(NS_CFG_DNS);
  ASSERT_TRUE(t2.ok());
  EXPECT_EQ(t2->features(), uint32_t(NS_CFG_DNS)) << "not the tightest fit";
  auto t3 = pool.take(NS_CFG_DNS | NS_CFG_UDP_OUT);
  ASSERT_TRUE(t3.ok());
  EXPECT_EQ(t3->features(), bpf::kAllPodFeatures);
  pool.refill();  // two spares for DNS | UDP_OUT
  ASSERT_EQ(pool.spares(), 2u);
  auto t4 = pool.take(NS_CFG_DNS | NS_CFG_EX_OUT_CIDR);
  ASSERT_TRUE(t4.ok());
  EXPECT_EQ(t4->features(), uint32_t(NS_CFG_DNS | NS_CFG_EX_OUT_CIDR));
  EXPECT_EQ(pool.spares(), 1u) << "a spare no pod wanted was not dropped";
}
