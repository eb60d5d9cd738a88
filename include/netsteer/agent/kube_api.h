// Pod labels from the Kubernetes API, for "excludePodLabels" (a CNI plugin is given the pod's
// namespace and name, never its labels, so the agent asks the API server: GET one pod).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "netsteer/common/result.h"
#include "netsteer/protocol/labels.h"

namespace netsteer::agent {

struct KubeApiOptions {
  std::string server;      // "https://host:port"
  std::string token_file;  // bearer token; re-read on every request (projected tokens rotate)
  std::string ca_file;     // CA bundle for the server's certificate; empty: the system's
  std::chrono::milliseconds timeout{2000};
};

// The in-cluster configuration: KUBERNETES_SERVICE_HOST/PORT and the service account's token and
// CA under /var/run/secrets/kubernetes.io/serviceaccount.
Result<KubeApiOptions> kube_api_in_cluster();

class PodLabelSource {
 public:
  virtual ~PodLabelSource() = default;
  // Errors: EAGAIN (API unreachable, timed out, pod not found yet: the runtime retries),
  // EACCES (token refused), EINVAL (a namespace/name that is not a Kubernetes name).
  virtual Result<protocol::Labels> labels(const std::string& ns, const std::string& name) = 0;
};

class KubeApiClient final : public PodLabelSource {
 public:
  explicit KubeApiClient(KubeApiOptions opts);
  ~KubeApiClient() override;
  Result<protocol::Labels> labels(const std::string& ns, const std::string& name) override;
  const KubeApiOptions& options() const { return opts_; }

 private:
  struct Curl;
  KubeApiOptions opts_;
  std::unique_ptr<Curl> curl_;
};

// metadata.labels of a Pod object (pure; tested and fuzzed without a server).
Result<protocol::Labels> labels_from_pod_json(std::string_view body);

}  // namespace netsteer::agent
