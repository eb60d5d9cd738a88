#include "netsteer/bpf/keep_warm.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <net/if.h>

#include "netsteer/bpf/objects.h"
#include "netsteer/bpf/pod_bpf.h"
#include "netsteer/skel/netsteer_warm.skel.h"

namespace netsteer::bpf {

struct KeepWarm::Skeleton {
  netsteer_warm* p = nullptr;
  ~Skeleton() {
    if (p) netsteer_warm__destroy(p);
  }
};

KeepWarm::KeepWarm() : s_(std::make_unique<Skeleton>()) {}
KeepWarm::~KeepWarm() = default;

Result<std::unique_ptr<KeepWarm>> KeepWarm::start(TcMode mode) {
  std::unique_ptr<KeepWarm> w(new KeepWarm());
  w->mode_ = mode;
  w->s_->p = netsteer_warm__open_and_load();
  if (!w->s_->p) return Error::from_errno(errno ? errno : EINVAL, "load netsteer_warm");
  const int tc_prog = bpf_program__fd(w->s_->p->progs.netsteer_warmtc);
  // The tc side by ifindex, which resolves in the calling thread's netns: done inside the new one.
  NS_TRY(w->ns_, netns::NetnsHandle::create_private([&]() -> Status {
    const int lo = static_cast<int>(::if_nametoindex("lo"));
    if (lo == 0) return Error::from_errno(errno, "find lo in the private netns");
    for (int i = 0; i < 2; ++i) {
      if (mode != TcMode::tcx) {
        NS_TRY_STATUS(PodBpf::attach_clsact_filter(tc_prog, lo, i == 0));
        continue;
      }
      NS_TRY(w->tc_links_[i], PodBpf::create_guard_link(tc_prog, lo, i == 0));
    }
    return {};
  }));
  w->lookup_link_.reset(bpf_link_create(bpf_program__fd(w->s_->p->progs.netsteer_warm), w->ns_.fd(), BPF_SK_LOOKUP, nullptr));
  if (!w->lookup_link_) return Error::from_errno(errno, "attach sk_lookup link to the private netns");
  return w;
}

nlohmann::json KeepWarm::to_json() const {
  nlohmann::json links = nlohmann::json::array({object_id(lookup_link_.get())});
  for (const auto& l : tc_links_)
    if (l) links.push_back(object_id(l.get()));
  return {{"netns_ino", ns_.id().ino}, {"tc_mode", to_string(mode_)}, {"links", links}};
}

}  // namespace netsteer::bpf
