// Prometheus exposition pieces: histogram buckets, label escaping, family layout.
#include <gtest/gtest.h>

#include "netsteer/metrics/metrics.h"

using namespace netsteer::metrics;

TEST(Metrics, HistogramBucketsAreCumulative) {
  Histogram h({0.001, 0.01, 0.1});
  for (double v : {0.0005, 0.001, 0.005, 0.05, 5.0}) h.observe(v);
  auto s = h.snapshot();
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{2, 3, 4, 5}));  // le is inclusive; +Inf last
  EXPECT_EQ(s.count, 5u);
  EXPECT_NEAR(s.sum, 5.0565, 1e-9);
}

TEST(Metrics, TextFormat) {
  TextWriter w;
  w.family("x_total", "counter", "Things.");
  w.sample("x_total", 3, {{"reason", "a\"b\\c\nd"}});
  Histogram h({0.5});
  h.observe(0.25);
  w.histogram("lat_seconds", "Latency.", h.snapshot());
  EXPECT_EQ(w.str(),
            "# HELP x_total Things.\n# TYPE x_total counter\n"
            "x_total{reason=\"a\\\"b\\\\c\\nd\"} 3\n"
            "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{le=\"0.5\"} 1\nlat_seconds_bucket{le=\"+Inf\"} 1\n"
            "lat_seconds_sum 0.25\nlat_seconds_count 1\n");
}

TEST(Metrics, BadAddressIsAClearError) {
  for (const char* a : {"nonsense", "127.0.0.1:99999", "not-an-ip:80", "127.0.0.1:x"}) {
    auto s = HttpServer::start(a, [] { return std::string(); }, [] { return true; });
    ASSERT_FALSE(s.ok()) << a;
    EXPECT_NE(s.error().message.find("HOST:PORT"), std::string::npos) << a;
  }
}
