#include "netsteer/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "netsteer/common/inet.h"
#include "netsteer/common/log.h"

namespace netsteer::metrics {

Histogram::Histogram(std::vector<double> b) : bounds_(std::move(b)), counts_(bounds_.size() + 1, 0) {
  std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double v) {
  std::lock_guard lk(mu_);
  size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++counts_[i];
  sum_ += v;
  ++count_;
}

Histogram::Snapshot Histogram::snapshot() const {
  std::lock_guard lk(mu_);
  Snapshot s{bounds_, {}, sum_, count_};
  uint64_t acc = 0;
  for (uint64_t c : counts_) s.cumulative.push_back(acc += c);
  return s;
}

std::string escape_label_value(const std::string& v) {
  std::string o;
  for (char c : v) {
    if (c == '\\') o += "\\\\";
    else if (c == '"') o += "\\\"";
    else if (c == '\n') o += "\\n";
    else o += c;
  }
  return o;
}

namespace {
std::string fmt_value(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace

void TextWriter::family(const std::string& name, const char* type, const std::string& help) {
  out_ += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void TextWriter::sample(const std::string& name, double value, const Labels& labels) {
  out_ += name;
  if (!labels.empty()) {
    out_ += '{';
    for (size_t i = 0; i < labels.size(); ++i)
      out_ += (i ? "," : "") + labels[i].first + "=\"" + escape_label_value(labels[i].second) + "\"";
    out_ += '}';
  }
  out_ += " " + fmt_value(value) + "\n";
}

void TextWriter::histogram(const std::string& name, const std::string& help, const Histogram::Snapshot& s) {
  family(name, "histogram", help);
  for (size_t i = 0; i < s.bounds.size(); ++i)
    sample(name + "_bucket", static_cast<double>(s.cumulative[i]), {{"le", fmt_value(s.bounds[i])}});
  sample(name + "_bucket", static_cast<double>(s.cumulative.back()), {{"le", "+Inf"}});
  sample(name + "_sum", s.sum);
  sample(name + "_count", static_cast<double>(s.count));
}

Result<std::unique_ptr<HttpServer>> HttpServer::start(const std::string& addr, std::function<std::string()> metrics,
                                                     std::function<bool()> ready) {
  auto colon = addr.rfind(':');
  if (colon == std::string::npos) return Error::msg("--metrics wants HOST:PORT, got '" + addr + "'", EINVAL);
  std::string host = addr.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  auto ip = IpAddr::parse(host);
  int port = -1;
  try {
    port = std::stoi(addr.substr(colon + 1));
  } catch (...) {
  }
  if (!ip.ok() || port < 0 || port > 65535) return Error::msg("--metrics wants HOST:PORT, got '" + addr + "'", EINVAL);
  SockAddr sa = SockAddr::make(*ip, static_cast<uint16_t>(port));
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->listen_fd_.reset(::socket(sa.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s->listen_fd_) return Error::from_errno(errno, "metrics socket");
  int one = 1;
  ::setsockopt(s->listen_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(s->listen_fd_.get(), sa.sa(), sa.len) != 0) return Error::from_errno(errno, "metrics bind " + addr);
  if (::listen(s->listen_fd_.get(), 16) != 0) return Error::from_errno(errno, "metrics listen " + addr);
  SockAddr bound;
  bound.len = sizeof bound.ss;
  s->bound_ = ::getsockname(s->listen_fd_.get(), bound.sa(), &bound.len) == 0 ? bound.str() : addr;
  s->stop_fd_.reset(::eventfd(0, EFD_CLOEXEC));
  if (!s->stop_fd_) return Error::from_errno(errno, "metrics eventfd");
  s->metrics_ = std::move(metrics);
  s->ready_ = std::move(ready);
  s->thread_ = log::start_thread("metrics", [p = s.get()] { p->loop(); });
  return s;
}

HttpServer::~HttpServer() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!::write(stop_fd_.get(), &one, sizeof one);
    thread_.join();
  }
}

void HttpServer::loop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents) return;
    UniqueFd c(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (c) serve(c.get());
  }
}

void HttpServer::serve(int fd) {
  // One short request per connection; a slow client gets 2 s in total, then is dropped.
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::string req;
  char buf[2048];
  while (req.find("\r\n\r\n") == std::string::npos && req.size() < 8192) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return;
    req.append(buf, static_cast<size_t>(n));
  }
  std::string line = req.substr(0, req.find("\r\n"));
  std::string path;
  if (line.rfind("GET ", 0) == 0) path = line.substr(4, line.find(' ', 4) - 4);
  int code = 200;
  std::string body, type = "text/plain; charset=utf-8";
  if (path == "/metrics") {
    body = metrics_();
    type = "text/plain; version=0.0.4; charset=utf-8";
  } else if (path == "/healthz") {
    body = "ok\n";
  } else if (path == "/readyz") {
    bool r = ready_();
    code = r ? 200 : 503;
    body = r ? "ready\n" : "not ready\n";
  } else {
    code = line.rfind("GET ", 0) == 0 ? 404 : 405;
    body = "not found\n";
  }
  std::string reason = code == 200 ? "OK" : code == 503 ? "Service Unavailable" : code == 404 ? "Not Found" : "Method Not Allowed";
  std::string head = "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + type +
                     "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  std::string all = head + body;
  for (size_t off = 0; off < all.size();) {
    ssize_t n = ::send(fd, all.data() + off, all.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

}  // namespace netsteer::metrics
