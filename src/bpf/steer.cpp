#include "netsteer/bpf/steer.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "../../bpf/netsteer_common.h"
#include "netsteer/common/unique_fd.h"
#include "netsteer/skel/netsteer_steer.skel.h"

namespace netsteer::bpf {

Status ensure_bpffs(const std::string& root) {
  struct statfs sfs {};
  if (::statfs(root.c_str(), &sfs) == 0 && sfs.f_type == BPF_FS_MAGIC) return {};
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  if (::mount("bpffs", root.c_str(), "bpf", 0, "mode=0700") < 0)
    return Error::from_errno(errno, "mount bpffs at " + root);
  return {};
}

Features probe_features() {
  Features f;
  utsname u{};
  if (::uname(&u) == 0) f.kernel_release = u.release;
  f.sk_lookup = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_LOOKUP, nullptr) > 0 &&
                libbpf_probe_bpf_helper(BPF_PROG_TYPE_SK_LOOKUP, BPF_FUNC_sk_assign, nullptr) > 0;
  return f;
}

Status require_capture_features(const Features& f) {
  if (!f.sk_lookup)
    return Error::msg("kernel " + f.kernel_release +
                          " lacks BPF sk_lookup (BPF_PROG_TYPE_SK_LOOKUP with bpf_sk_assign, needs Linux >= 5.9)",
                      EOPNOTSUPP);
  return {};
}

namespace {

struct SkelDeleter {
  void operator()(netsteer_steer* s) const { netsteer_steer__destroy(s); }
};

ns_addr to_key(const IpAddr& ip0) {
  IpAddr ip = ip0.v6_mapped();
  ns_addr a{};
  std::memcpy(a.bytes, ip.bytes.data(), 16);
  return a;
}

ns_lpm_key to_lpm(const Prefix& p) {
  ns_lpm_key k{};
  IpAddr a = p.addr.v6_mapped();
  std::memcpy(k.bytes, a.bytes.data(), 16);
  k.prefixlen = p.addr.is_v4() ? p.len + 96u : p.len;
  return k;
}

template <typename K, typename V>
Status map_update(bpf_map* m, const K& k, const V& v, const char* what) {
  int r = bpf_map__update_elem(m, &k, sizeof k, &v, sizeof v, BPF_ANY);
  if (r < 0) return Error::from_libbpf(r, std::string("update ") + what);
  return {};
}

}  // namespace

struct SteerProgram::Impl {
  std::unique_ptr<netsteer_steer, SkelDeleter> skel;
  UniqueFd link;
  std::string pin_dir;
  std::vector<std::string> pins;

  Status pin(int fd, const std::string& name) {
    std::string path = pin_dir + "/" + name;
    if (bpf_obj_pin(fd, path.c_str()) < 0) return Error::from_errno(errno, "pin " + path);
    pins.push_back(path);
    return {};
  }
  void unpin_all() {
    for (const auto& p : pins) ::unlink(p.c_str());
    pins.clear();
    ::rmdir(pin_dir.c_str());
  }
};

SteerProgram::SteerProgram() : impl_(std::make_unique<Impl>()) {}
SteerProgram::~SteerProgram() = default;

Result<std::unique_ptr<SteerProgram>> SteerProgram::create(const std::string& pin_dir, const netns::NetnsHandle& ns,
                                                           const SteerConfig& cfg) {
  std::unique_ptr<SteerProgram> sp(new SteerProgram());
  Impl& im = *sp->impl_;
  im.pin_dir = pin_dir;
  im.skel.reset(netsteer_steer__open_and_load());
  if (!im.skel) return Error::from_errno(errno ? errno : EINVAL, "load sk_lookup program netsteer_steer");
  auto* maps = &im.skel->maps;
  uint8_t one = 1;
  for (const auto& ip : cfg.pod_ips) NS_TRY_STATUS(map_update(maps->ns_pod_addrs, to_key(ip), one, "ns_pod_addrs"));
  for (uint16_t p : cfg.exclusions.inbound_ports) NS_TRY_STATUS(map_update(maps->ns_ex_in_port, p, one, "ns_ex_in_port"));
  for (uint16_t p : cfg.exclusions.outbound_ports)
    NS_TRY_STATUS(map_update(maps->ns_ex_out_port, p, one, "ns_ex_out_port"));
  for (const auto& p : cfg.exclusions.outbound_cidrs)
    NS_TRY_STATUS(map_update(maps->ns_ex_out_cidr, to_lpm(p), one, "ns_ex_out_cidr"));
  for (const auto& p : cfg.exclusions.inbound_sources)
    NS_TRY_STATUS(map_update(maps->ns_ex_in_src, to_lpm(p), one, "ns_ex_in_src"));

  // On any failure below, the partially pinned state is removed (the link detaches with its fd).
  struct Undo {
    Impl& im;
    bool armed = true;
    ~Undo() {
      if (armed) im.unpin_all();
    }
  } undo{im};
  std::error_code ec;
  std::filesystem::create_directories(pin_dir, ec);
  if (ec) return Error::msg("create pin dir " + pin_dir + ": " + ec.message(), ec.value());

  int prog_fd = bpf_program__fd(im.skel->progs.netsteer_steer);
  im.link.reset(bpf_link_create(prog_fd, ns.fd(), BPF_SK_LOOKUP, nullptr));
  if (!im.link) return Error::from_errno(errno, "attach sk_lookup link to pod netns");
  NS_TRY_STATUS(im.pin(prog_fd, "prog_steer"));
  NS_TRY_STATUS(im.pin(im.link.get(), "link_steer"));
  for (bpf_map* m : {maps->ns_sockets, maps->ns_pod_addrs, maps->ns_bypass, maps->ns_ex_in_port, maps->ns_ex_out_port,
                     maps->ns_ex_out_cidr, maps->ns_ex_in_src, maps->ns_stats})
    NS_TRY_STATUS(im.pin(bpf_map__fd(m), std::string("map_") + bpf_map__name(m)));
  undo.armed = false;
  return sp;
}

Status SteerProgram::set_listeners(int outbound_fd, int inbound_fd) {
  auto* m = impl_->skel->maps.ns_sockets;
  uint32_t k0 = NS_SLOT_OUTBOUND, k1 = NS_SLOT_INBOUND;
  uint64_t v0 = static_cast<uint64_t>(outbound_fd), v1 = static_cast<uint64_t>(inbound_fd);
  NS_TRY_STATUS(map_update(m, k0, v0, "ns_sockets[outbound]"));
  NS_TRY_STATUS(map_update(m, k1, v1, "ns_sockets[inbound]"));
  return {};
}

Status SteerProgram::add_bypass(const SockAddr& local) {
  ns_sock_key k{to_key(local.ip()), local.port(), 0};
  uint8_t one = 1;
  return map_update(impl_->skel->maps.ns_bypass, k, one, "ns_bypass");
}

Status SteerProgram::remove_bypass(const SockAddr& local) {
  ns_sock_key k{to_key(local.ip()), local.port(), 0};
  int r = bpf_map__delete_elem(impl_->skel->maps.ns_bypass, &k, sizeof k, 0);
  if (r < 0 && r != -ENOENT) return Error::from_libbpf(r, "delete ns_bypass");
  return {};
}

Result<SteerStats> SteerProgram::stats() const {
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return Error::from_libbpf(ncpu, "count possible cpus");
  std::vector<uint64_t> vals(static_cast<size_t>(ncpu));
  uint64_t sum[NS_STAT_MAX] = {};
  for (uint32_t i = 0; i < NS_STAT_MAX; ++i) {
    int r = bpf_map__lookup_elem(impl_->skel->maps.ns_stats, &i, sizeof i, vals.data(), vals.size() * sizeof(uint64_t), 0);
    if (r < 0) return Error::from_libbpf(r, "read ns_stats");
    for (uint64_t v : vals) sum[i] += v;
  }
  SteerStats s;
  s.lookups = sum[NS_STAT_LOOKUPS];
  s.inbound_assigned = sum[NS_STAT_INBOUND_ASSIGNED];
  s.outbound_assigned = sum[NS_STAT_OUTBOUND_ASSIGNED];
  s.passed_local = sum[NS_STAT_PASSED_LOCAL];
  s.passed_excluded = sum[NS_STAT_PASSED_EXCLUDED];
  s.passed_bypass = sum[NS_STAT_PASSED_BYPASS];
  s.drop_no_listener = sum[NS_STAT_DROP_NO_LISTENER];
  s.drop_assign_failed = sum[NS_STAT_DROP_ASSIGN_FAILED];
  return s;
}

namespace {
uint32_t id_of_prog(int fd) {
  bpf_prog_info info{};
  uint32_t len = sizeof info;
  return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : 0;
}
uint32_t id_of_link(int fd) {
  bpf_link_info info{};
  uint32_t len = sizeof info;
  return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : 0;
}
}  // namespace

uint32_t SteerProgram::prog_id() const { return id_of_prog(bpf_program__fd(impl_->skel->progs.netsteer_steer)); }
uint32_t SteerProgram::link_id() const { return impl_->link ? id_of_link(impl_->link.get()) : 0; }

Status SteerProgram::destroy() {
  Status st;
  if (impl_->link && bpf_link_detach(impl_->link.get()) < 0 && errno != EINVAL)
    st = Error::from_errno(errno, "detach sk_lookup link");
  impl_->unpin_all();
  impl_->link.reset();
  return st;
}

}  // namespace netsteer::bpf
