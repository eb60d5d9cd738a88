// Prometheus text exposition (format 0.0.4), a fixed-bucket histogram, and a minimal HTTP
// endpoint serving /metrics, /healthz and /readyz from one thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "netsteer/common/result.h"
#include "netsteer/common/unique_fd.h"

namespace netsteer::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // per bound, then +Inf last
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative), +Inf last
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Builds one exposition; every family is declared once with HELP and TYPE before its samples.
class TextWriter {
 public:
  void family(const std::string& name, const char* type, const std::string& help);
  void sample(const std::string& name, double value, const Labels& labels = {});
  void histogram(const std::string& name, const std::string& help, const Histogram::Snapshot& s);
  const std::string& str() const { return out_; }

 private:
  std::string out_;
};

std::string escape_label_value(const std::string& v);

class HttpServer {
 public:
  // addr "HOST:PORT" (IPv4 or [IPv6]; port 0 picks one). metrics() renders /metrics; ready()
  // decides /readyz.
  static Result<std::unique_ptr<HttpServer>> start(const std::string& addr, std::function<std::string()> metrics,
                                                   std::function<bool()> ready);
  ~HttpServer();
  std::string bound_address() const { return bound_; }

 private:
  HttpServer() = default;
  void loop();
  void serve(int fd);
  UniqueFd listen_fd_, stop_fd_;
  std::string bound_;
  std::function<std::string()> metrics_;
  std::function<bool()> ready_;
  std::thread thread_;
};

}  // namespace netsteer::metrics
