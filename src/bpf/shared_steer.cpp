#include "netsteer/bpf/shared_steer.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <spdlog/spdlog.h>

#include "netsteer/bpf/pod_bpf.h"
#include "netsteer/skel/netsteer_shared.skel.h"
#include "netsteer/skel/netsteer_stub.skel.h"
#include "netsteer_common.h"

namespace netsteer::bpf {

namespace {

constexpr const char* kProgShared = "prog_shared";
constexpr uint32_t kPodMax = 4096;  // NS_POD_MAX (bpf/netsteer_steer.h)

std::string outer_name(const char* pod_map) { return std::string("ns_all_") + (pod_map + 3); }
std::string pin_of(const std::string& map_name) { return "map_" + map_name; }

// The maps of a pod's stub object, created bare (no pod, nothing in them): the inner-map
// templates of the arrays.
Result<std::vector<UniqueFd>> inner_templates() {
  SkelPtr<netsteer_stub, netsteer_stub__destroy> stub(netsteer_stub__open());
  if (!stub.p) return Error::from_errno(errno ? errno : EINVAL, "open the stub object");
  std::vector<UniqueFd> fds;
  for (const char* name : kPodMapNames) {
    bpf_map* m = bpf_object__find_map_by_name(stub.p->obj, name);
    if (!m) return Error::msg(std::string("the stub object has no map ") + name, ENOENT);
    LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = bpf_map__map_flags(m));
    UniqueFd fd(bpf_map_create(bpf_map__type(m), name, bpf_map__key_size(m), bpf_map__value_size(m),
                               bpf_map__max_entries(m), &o));
    if (!fd) return Error::from_errno(errno, std::string("create the template of ") + name);
    fds.push_back(std::move(fd));
  }
  return fds;
}

}  // namespace

Result<std::shared_ptr<SharedSteer>> SharedSteer::open(const std::string& pin_root) {
  const std::string dir = pin_root + "/" + kSharedSteerDir;
  SkelPtr<netsteer_shared, netsteer_shared__destroy> sk(netsteer_shared__open());
  if (!sk.p) return Error::from_errno(errno ? errno : EINVAL, "open the shared sk_lookup program");

  // A previous agent's arrays (and the pods registered in them), when all are pinned.
  BpfObjects objs(dir);
  if (auto prev = BpfObjects::open(dir); prev.ok()) {
    bool complete = true;
    bpf_map* m;
    bpf_object__for_each_map(m, sk.p->obj) {
      if (!bpf_map__is_internal(m) && !prev->has(pin_of(bpf_map__name(m)))) complete = false;
    }
    if (complete) {
      objs = std::move(*prev);
    } else {
      spdlog::warn("{}: incomplete pins of a previous agent: removed", dir);
      prev->remove_all();
    }
  }
  const bool reuse = objs.has(pin_of("ns_steer_progs"));
  std::vector<UniqueFd> templates;
  if (reuse) {
    bpf_map* m;
    bpf_object__for_each_map(m, sk.p->obj) {
      if (bpf_map__is_internal(m)) continue;
      if (int r = bpf_map__reuse_fd(m, objs.fd(pin_of(bpf_map__name(m)))); r < 0)
        return Error::from_libbpf(r, std::string("re-use the pinned map ") + bpf_map__name(m));
    }
  } else {
    NS_TRY(templates, inner_templates());
    for (size_t i = 0; i < kPodMaps; ++i) {
      bpf_map* m = bpf_object__find_map_by_name(sk.p->obj, outer_name(kPodMapNames[i]).c_str());
      if (!m) return Error::msg("the shared program has no map " + outer_name(kPodMapNames[i]), ENOENT);
      if (int r = bpf_map__set_inner_map_fd(m, templates[i].get()); r < 0)
        return Error::from_libbpf(r, "set the inner map of " + outer_name(kPodMapNames[i]));
    }
  }
  sk.p->rodata->ns_have_ingress_ifindex = have_sk_lookup_ingress_ifindex() ? 1 : 0;
  if (int r = netsteer_shared__load(sk.p); r < 0)
    return Error::from_libbpf(r, "load the shared sk_lookup program (needs map-in-map arrays of sockmaps and "
                                 "tail calls from sk_lookup programs)");

  auto dup_of = [](int fd, const std::string& what) -> Result<UniqueFd> {
    UniqueFd d = dup_fd(fd);
    if (!d) return Error::from_errno(errno, "dup " + what);
    return d;
  };
  if (!reuse) {
    bpf_map* m;
    bpf_object__for_each_map(m, sk.p->obj) {
      if (bpf_map__is_internal(m)) continue;
      NS_TRY(UniqueFd d, dup_of(bpf_map__fd(m), bpf_map__name(m)));
      NS_TRY_STATUS(objs.add(pin_of(bpf_map__name(m)), std::move(d)));
    }
  }
  // Every stub calls this copy from now on (one atomic update), then its pin replaces the old one.
  int prog = bpf_program__fd(sk.p->progs.netsteer_shared);
  NS_TRY_STATUS(BpfMap<uint32_t, uint32_t>(objs.fd(pin_of("ns_steer_progs"))).put(0, static_cast<uint32_t>(prog)));
  if (objs.has(kProgShared)) objs.drop(kProgShared);
  NS_TRY(UniqueFd p, dup_of(prog, kProgShared));
  NS_TRY_STATUS(objs.add(kProgShared, std::move(p)));

  std::shared_ptr<SharedSteer> s(new SharedSteer(std::move(objs)));
  s->used_.assign(kPodMax, false);
  s->used_[0] = true;
  uint32_t id = 0;
  for (uint32_t i = 1; i < kPodMax; ++i)
    if (::bpf_map_lookup_elem(s->outer(kPodMaps - 1), &i, &id) == 0) s->used_[i] = true;
  return s;
}

SharedSteer::~SharedSteer() = default;

int SharedSteer::outer(size_t i) const { return objs_.fd(pin_of(outer_name(kPodMapNames[i]))); }
int SharedSteer::scratch_fd() const { return objs_.fd(pin_of("ns_steer_scratch")); }
int SharedSteer::progs_fd() const { return objs_.fd(pin_of("ns_steer_progs")); }

Result<uint32_t> SharedSteer::add(const std::function<int(const char*)>& map_fd) {
  std::lock_guard lk(mu_);
  for (uint32_t n = 1; n < kPodMax; ++n) {
    uint32_t idx = next_;
    next_ = next_ + 1 < kPodMax ? next_ + 1 : 1;
    if (used_[idx]) continue;
    uint32_t id = 0;
    // Taken by another agent (a handover in progress): skip it.
    if (::bpf_map_lookup_elem(outer(kPodMaps - 1), &idx, &id) == 0) {
      used_[idx] = true;
      continue;
    }
    for (size_t i = 0; i < kPodMaps; ++i) {
      uint32_t fd = static_cast<uint32_t>(map_fd(kPodMapNames[i]));
      if (::bpf_map_update_elem(outer(i), &idx, &fd, BPF_ANY) < 0) {
        Error e = Error::from_errno(errno, std::string("register the pod's ") + kPodMapNames[i] + " with the shared program");
        for (size_t j = 0; j < i; ++j) (void)::bpf_map_delete_elem(outer(j), &idx);
        return e;
      }
    }
    used_[idx] = true;
    return idx;
  }
  return Error::msg("the shared steering program serves " + std::to_string(kPodMax - 1) + " pods at most", E2BIG);
}

Status SharedSteer::claim(uint32_t idx, const std::function<int(const char*)>& map_fd) {
  if (idx == 0 || idx >= kPodMax) return Error::msg("pod index " + std::to_string(idx) + " out of range", ERANGE);
  std::lock_guard lk(mu_);
  for (size_t i = 0; i < kPodMaps; ++i) {
    uint32_t have = 0;
    int fd = map_fd(kPodMapNames[i]);
    if (::bpf_map_lookup_elem(outer(i), &idx, &have) == 0) {
      if (have != object_id(fd))
        return Error::msg("pod index " + std::to_string(idx) + " holds another pod's " + kPodMapNames[i], EEXIST);
      continue;
    }
    uint32_t v = static_cast<uint32_t>(fd);
    if (::bpf_map_update_elem(outer(i), &idx, &v, BPF_ANY) < 0)
      return Error::from_errno(errno, std::string("register the pod's ") + kPodMapNames[i] + " again");
  }
  used_[idx] = true;
  return {};
}

void SharedSteer::remove(uint32_t idx, const std::function<int(const char*)>& map_fd) {
  if (idx == 0 || idx >= kPodMax) return;
  std::lock_guard lk(mu_);
  bool all = true;
  for (size_t i = 0; i < kPodMaps; ++i) {
    uint32_t have = 0;
    if (::bpf_map_lookup_elem(outer(i), &idx, &have) < 0) continue;
    int fd = map_fd(kPodMapNames[i]);
    if (fd >= 0 && have == object_id(fd))
      (void)::bpf_map_delete_elem(outer(i), &idx);
    else
      all = false;  // another pod's now: leave it and the index
  }
  if (all) used_[idx] = false;
}

size_t SharedSteer::pods() {
  std::lock_guard lk(mu_);
  size_t n = 0;
  for (size_t i = 1; i < used_.size(); ++i) n += used_[i];
  return n;
}

uint32_t SharedSteer::prog_id() const {
  ObjRef p = objs_.ref(kProgShared);
  return p ? object_id(p.get()) : 0;
}

nlohmann::json SharedSteer::describe() {
  return {{"prog_id", prog_id()}, {"pin_dir", objs_.dir()}, {"pods", pods()}};
}

void SharedSteer::remove_pins() { objs_.remove_all(); }

}  // namespace netsteer::bpf
