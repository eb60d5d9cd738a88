#include "netsteer/agent/control.h"
#include "netsteer/common/accept.h"
#include "netsteer/common/log.h"

#include <signal.h>

#include <algorithm>
#include <set>
#include <chrono>
#include <spdlog/spdlog.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstring>

namespace netsteer::agent {

using protocol::MsgType;
using protocol::Reply;

namespace {
Reply error_reply(std::string msg, int err_no = 0) {
  Reply r;
  r.ok = false;
  r.error = std::move(msg);
  r.err_no = err_no;
  return r;
}
Reply error_reply(const Error& e) { return error_reply(e.message, e.code); }
}  // namespace

Reply RequestHandler::handle(protocol::Packet& packet) {
  // Framing problems first: the fds (if any) are already owned by `packet` and close with it.
  if (packet.truncated)
    return error_reply("message too large (limit " + std::to_string(protocol::kMaxMessageSize) + " bytes)");
  if (packet.ctrl_truncated) return error_reply("truncated control data (too many fds or a bad cmsg)");
  auto req = protocol::decode_request(packet.data);
  if (!req.ok()) return error_reply(req.error().message);
  if (req->type != MsgType::kAdd && !packet.fds.empty())
    return error_reply("'" + std::string(to_string(req->type)) + "' carries no fds, got " +
                       std::to_string(packet.fds.size()));
  Reply r;
  switch (req->type) {
    case MsgType::kHello:
      r.data = {{"version", protocol::kVersion}, {"agent", "netsteerd " NETSTEER_VERSION}};
      return r;
    case MsgType::kAdd:
    {
      auto t0 = std::chrono::steady_clock::now();
      Reply add = handle_add(*req, packet);
      log::PodScope scope(req->pod.uid, req->pod.namespace_, req->pod.name);
      spdlog::debug("add {}: handled in {:.2f} ms", req->pod.uid,
                    std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      return add;
    }
    case MsgType::kDel: {
      std::optional<netns::NetnsId> id;
      if (req->netns_ino) id = netns::NetnsId{req->netns_dev.value_or(0), *req->netns_ino};
      auto st = mgr_.unenrol(req->uid, id);
      if (!st.ok()) return error_reply(st.error());
      return r;
    }
    case MsgType::kList:
      r.data = {{"pods", mgr_.list()}};
      return r;
    case MsgType::kStatus:
      r.data = {{"status", status_ ? status_() : nlohmann::json::object()}};
      return r;
    case MsgType::kCheck: {
      // A pod left uncaptured because of its labels checks out as "skipped" (re-evaluated, so the
      // answer survives agent restarts) as long as it is not enrolled.
      if (!req->pod.skip_labels.empty() && mgr_.pod_json(req->uid).is_null()) {
        auto why = skip_reason(req->pod);
        if (!why.ok()) return error_reply(why.error());
        if (!why->empty()) {
          r.data = {{"skipped", *why}};
          return r;
        }
      }
      if (auto st = mgr_.check(req->uid); !st.ok()) return error_reply(st.error());
      [[fallthrough]];
    }
    case MsgType::kInspect: {
      auto p = mgr_.pod_json(req->uid);
      if (p.is_null()) return error_reply("unknown pod '" + req->uid + "'", ENOENT);
      r.data = {{"pod", p}};
      return r;
    }
    case MsgType::kHandover:
      return error_reply("'handover' is served on the control socket only", EINVAL);
    case MsgType::kLease:  // the control server serves a lease itself (it keeps the connection)
      return error_reply("'lease' carries no fds and is served on the control socket only", EINVAL);
    case MsgType::kConns: {
      if (!req->uid.empty() && mgr_.pod_json(req->uid).is_null()) return error_reply("unknown pod '" + req->uid + "'", ENOENT);
      r.data = {{"connections", conns_ ? conns_(req->uid) : nlohmann::json::array()}};
      return r;
    }
    case MsgType::kSnapshot: {
      // The sender lists the pods that exist on the node; every other enrolment is stale.
      auto removed = mgr_.retain_only(std::set<std::string>(req->uids.begin(), req->uids.end()));
      r.data = {{"removed", removed}};
      return r;
    }
  }
  return error_reply("unhandled message type");
}

Reply RequestHandler::handle_add(const protocol::Request& req, protocol::Packet& packet) {
  if (packet.fds.size() != 1)
    return error_reply("'add' needs exactly one netns fd in SCM_RIGHTS, got " + std::to_string(packet.fds.size()));
  auto ns = netns::NetnsHandle::from_fd(std::move(packet.fds[0]));
  if (!ns.ok()) return error_reply("bad netns fd: " + ns.error().message);
  if (ns->id() == netns::NetnsHandle::host().id())
    return error_reply("refusing to enrol the agent's own (host) network namespace");
  if (!req.pod.skip_labels.empty()) {
    auto why = skip_reason(req.pod);
    if (!why.ok()) return error_reply(why.error());
    if (!why->empty()) {
      // Not captured. A stale enrolment under the same uid (a re-created sandbox) goes too.
      if (!mgr_.pod_json(req.pod.uid).is_null()) (void)mgr_.unenrol(req.pod.uid, std::nullopt);
      spdlog::info("pod {}/{} ({}) not captured: {}", req.pod.namespace_, req.pod.name, req.pod.uid, *why);
      Reply r;
      r.data = {{"result", "skipped"}, {"reason", *why}};
      return r;
    }
  }
  auto res = mgr_.enrol(req.pod, std::move(*ns));
  if (!res.ok()) return error_reply(res.error().message);
  Reply r;
  // The summary (identity, addresses, listeners, enrol_ms): the runtime waits for this reply, and
  // the detail (BPF object info and counters, read from the kernel) is what `inspect` is for.
  r.data = {{"result", *res}, {"pod", mgr_.pod_json(req.pod.uid, false)}};
  return r;
}

Result<std::string> RequestHandler::skip_reason(const protocol::PodSpec& pod) {
  if (!labels_)
    return Error::msg("the pod asks to be skipped by label (excludePodLabels) but netsteerd has no Kubernetes API "
                      "access; start it with --kube-api",
                      EINVAL);
  if (pod.namespace_.empty() || pod.name.empty())
    return Error::msg("excludePodLabels needs the pod's namespace and name (K8S_POD_NAMESPACE/K8S_POD_NAME)", EINVAL);
  NS_TRY(auto reqs, protocol::parse_label_requirements(pod.skip_labels));
  NS_TRY(auto labels, labels_->labels(pod.namespace_, pod.name));
  auto m = protocol::first_match(reqs, labels);
  return m ? "pod label matches excludePodLabels '" + m->str() + "'" : std::string();
}

ControlServer::~ControlServer() {
  clients_.clear();
  // After a handover the socket (and its path) belong to the new agent.
  if (listen_fd_ && !opts_.socket_path.empty() && !handed_over_) ::unlink(opts_.socket_path.c_str());
}

Status ControlServer::listen() {
  NS_TRY(UniqueFd fd, protocol::listen_seqpacket(opts_.socket_path));
  return serve_on(std::move(fd));
}

Status ControlServer::serve_on(UniqueFd listen_fd, std::vector<UniqueFd> clients) {
  listen_fd_ = std::move(listen_fd);
  int fl = ::fcntl(listen_fd_.get(), F_GETFL);
  if (fl < 0 || ::fcntl(listen_fd_.get(), F_SETFL, fl | O_NONBLOCK) < 0) return Error::from_errno(errno, "fcntl");
  epoll_fd_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd_) return Error::from_errno(errno, "epoll_create1");
  stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd_) return Error::from_errno(errno, "eventfd");
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  // The signals must be blocked in every thread (netsteerd blocks them before starting any).
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal_fd_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd_) return Error::from_errno(errno, "signalfd");
  for (int fd : {listen_fd_.get(), stop_fd_.get(), signal_fd_.get()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) return Error::from_errno(errno, "epoll_ctl");
  }
  spdlog::info("control socket listening on {}", opts_.socket_path);
  if (!clients.empty()) spdlog::info("control: serving {} connection(s) the previous agent had accepted", clients.size());
  // Already non-blocking: O_NONBLOCK (accept4 in the previous agent) belongs to the open file,
  // which the fd passed over SCM_RIGHTS shares.
  for (auto& c : clients) add_client(protocol::SeqpacketChannel(std::move(c)));
  return {};
}

void ControlServer::stop() {
  uint64_t one = 1;
  if (stop_fd_) (void)::write(stop_fd_.get(), &one, sizeof one);
}

Status ControlServer::run() {
  prepare_accept_reserve();
  epoll_event evs[64];
  for (;;) {
    // Wake often enough to enforce the idle timeout on silent peers.
    int wait_ms = static_cast<int>(std::clamp<long long>(opts_.client_idle_timeout.count() / 2, 10, 1000));
    int n = ::epoll_wait(epoll_fd_.get(), evs, 64, wait_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, "epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == signal_fd_.get()) {
        signalfd_siginfo si{};
        (void)::read(fd, &si, sizeof si);
        spdlog::info("received signal {}, shutting down", si.ssi_signo);
        return {};
      }
      if (fd == stop_fd_.get()) return {};
      if (fd == listen_fd_.get()) {
        accept_clients();
        continue;
      }
      if (evs[i].events & EPOLLIN) {
        serve_client(fd);
        if (handed_over_) return {};
      } else if (evs[i].events & (EPOLLHUP | EPOLLERR)) {
        drop_client(fd);
      }
    }
    expire_idle();
  }
}

void ControlServer::accept_clients() {
  for (;;) {
    Accepted a = accept_or_shed(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (a.result == AcceptResult::again) return;
    if (a.result != AcceptResult::accepted) {
      ++rejected_peers_;
      spdlog::warn("control accept: {}{}", std::strerror(a.err),
                   a.result == AcceptResult::shed ? " (out of file descriptors: connection refused)" : "");
      if (a.result == AcceptResult::shed) continue;
      return;
    }
    UniqueFd c = std::move(a.fd);
    protocol::SeqpacketChannel ch(std::move(c));
    auto cred = ch.peer_cred();
    if (!cred.ok() || !opts_.allowed_uids.count(cred->uid)) {
      ++rejected_peers_;
      std::string who = cred.ok() ? "uid " + std::to_string(cred->uid) : "unknown peer";
      spdlog::warn("control: refusing {} (not an allowed peer)", who);
      (void)ch.send(protocol::encode_reply(error_reply("permission denied: " + who + " is not allowed")));
      continue;  // closes
    }
    if (clients_.size() >= opts_.max_clients) {
      // Full: the longest-silent connection makes room, so a flood of idle connects cannot lock
      // the CNI plugin out (each flooder is cut off by the idle timeout anyway). A lease is never
      // the one closed: it is silent by design, and closing it would end the hand-off.
      auto oldest = clients_.end();
      for (auto c = clients_.begin(); c != clients_.end(); ++c)
        if (!c->second.release && (oldest == clients_.end() || c->second.last < oldest->second.last)) oldest = c;
      ++rejected_peers_;
      if (oldest == clients_.end()) {
        spdlog::warn("control: {} connections open (limit), all of them leases: refusing a new one", clients_.size());
        (void)ch.send(protocol::encode_reply(error_reply("too many control connections")));
        continue;
      }
      spdlog::warn("control: {} connections open (limit): closing the longest silent one", clients_.size());
      (void)oldest->second.ch.send(protocol::encode_reply(error_reply("too many control connections")));
      drop_client(oldest->first);
    }
    add_client(std::move(ch));
  }
}

void ControlServer::add_client(protocol::SeqpacketChannel ch) {
  int fd = ch.fd();
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) {
    spdlog::warn("control: epoll_ctl: {}", std::strerror(errno));
    return;  // closes
  }
  clients_.emplace(fd, Client{std::move(ch), std::chrono::steady_clock::now(), {}});
  nclients_ = clients_.size();
}

void ControlServer::serve_client(int fd) {
  auto it = clients_.find(fd);
  if (it == clients_.end()) return;
  auto& client = it->second;
  client.last = std::chrono::steady_clock::now();
  // One packet per wakeup keeps one busy peer from starving the others (level-triggered epoll).
  auto p = client.ch.recv(protocol::kMaxMessageSize);
  if (!p.ok()) {
    if (p.error().code == EAGAIN) return;
    drop_client(fd);
    return;
  }
  if (p->data.empty() && p->fds.empty() && !p->truncated) {  // orderly EOF
    drop_client(fd);
    return;
  }
  if (auto req = protocol::decode_request(p->data); req.ok() && req->type == MsgType::kHandover) {
    if (!p->fds.empty()) {
      (void)client.ch.send(protocol::encode_reply(error_reply("'handover' carries no fds", EINVAL)));
    } else if (!handover_) {
      (void)client.ch.send(protocol::encode_reply(error_reply("this agent does not hand over", EPERM)));
    } else {
      // Connections accepted in the same wake-up as the handover request (a CNI ADD, a status
      // poll) move with the listener: the new agent answers them.
      std::vector<int> others;
      for (const auto& [cfd, c] : clients_)
        if (cfd != fd) others.push_back(cfd);
      if (handover_(client.ch, listen_fd_.get(), others)) {
        handed_over_ = true;
        // The new agent holds them now: closing our copies does not end them.
        while (!clients_.empty()) drop_client(clients_.begin()->first);
        return;
      }
    }
    drop_client(fd);
    return;
  }
  if (auto req = protocol::decode_request(p->data); req.ok() && req->type == MsgType::kLease && p->fds.empty()) {
    serve_lease(client, *req);
    return;
  }
  Reply r = handler_.handle(*p);
  if (!r.ok) spdlog::info("control: request refused: {}", r.error);
  auto st = client.ch.send(protocol::encode_reply(r));
  if (!st.ok()) {
    // A peer that does not read its replies is dropped rather than waited for.
    spdlog::warn("control: dropping client: {}", st.error().message);
    drop_client(fd);
  }
}

void ControlServer::serve_lease(Client& client, const protocol::Request& req) {
  Reply r;
  std::vector<int> fds;
  Result<LeaseGrant> g = Error::msg("this agent does not lease listeners", EOPNOTSUPP);
  if (client.release) {
    g = Error::msg("this connection already holds a lease", EBUSY);
  } else if (lease_) {
    auto cred = client.ch.peer_cred();
    g = lease_(req, cred.ok() ? "pid " + std::to_string(cred->pid) + " (uid " + std::to_string(cred->uid) + ")" : "a peer");
  }
  if (!g.ok()) {
    r = error_reply(g.error());
    spdlog::info("control: lease refused: {}", r.error);
  } else {
    r.data = g->data;
    for (const auto& f : g->fds) fds.push_back(f.get());
  }
  if (auto st = client.ch.send(protocol::encode_reply(r), fds); !st.ok()) {
    spdlog::warn("control: lease reply: {}", st.error().message);
    if (g.ok()) g->release("the reply could not be sent");
    return;
  }
  if (g.ok()) client.release = std::move(g->release);  // our copies of the fds close here
}

void ControlServer::drop_client(int fd) {
  ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  if (auto it = clients_.find(fd); it != clients_.end() && it->second.release) {
    auto release = std::move(it->second.release);
    clients_.erase(it);
    release("the holder closed the connection");
  } else {
    clients_.erase(fd);
  }
  nclients_ = clients_.size();
}

void ControlServer::expire_idle() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = clients_.begin(); it != clients_.end();) {
    if (!it->second.release && now - it->second.last > opts_.client_idle_timeout) {
      int fd = it->first;
      ++it;
      spdlog::info("control: closing idle client");
      drop_client(fd);
    } else {
      ++it;
    }
  }
}

}  // namespace netsteer::agent
