#include "netsteer/bpf/keep_warm.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <net/if.h>

#include "netsteer/bpf/objects.h"
#include "netsteer/bpf/tcx.h"
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
    if (mode == TcMode::tcx) {
      for (int i = 0; i < 2; ++i) {
        w->tc_links_[i].reset(bpf_link_create(tc_prog, lo, i == 0 ? kBpfTcxIngress : kBpfTcxEgress, nullptr));
        if (!w->tc_links_[i]) return Error::from_errno(errno, "attach tcx link to lo of the private netns");
      }
      return {};
    }
    for (auto point : {BPF_TC_INGRESS, BPF_TC_EGRESS}) {
      LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = lo, .attach_point = point);
      int r = bpf_tc_hook_create(&hook);  // the clsact qdisc
      if (r < 0 && r != -EEXIST) return Error::from_libbpf(r, "create clsact qdisc on lo of the private netns");
      LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = tc_prog);
      if (r = bpf_tc_attach(&hook, &opts); r < 0) return Error::from_libbpf(r, "attach clsact filter to lo");
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
