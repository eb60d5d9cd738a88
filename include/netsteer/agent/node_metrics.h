// The agent's Prometheus metrics. Per-node series only: per-pod detail (counters, ids) is in
// `netsteerctl inspect`, so the series count stays fixed however many pods a node runs.
#pragma once

#include <string>

#include "netsteer/agent/enrolment.h"

namespace netsteer::agent {

struct NodeMetricsInput {
  const EnrolmentManager* manager = nullptr;
  size_t control_connections = 0;
  uint64_t control_rejected = 0;
  std::string version, kernel, tc_mode;
};

std::string render_node_metrics(const NodeMetricsInput& in);

}  // namespace netsteer::agent
