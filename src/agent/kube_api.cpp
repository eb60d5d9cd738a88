#include "netsteer/agent/kube_api.h"

#include <curl/curl.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

namespace netsteer::agent {

namespace {

constexpr const char* kServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";
constexpr size_t kMaxBody = 4 << 20;  // a Pod object is a few KiB; refuse anything absurd

// A DNS-1123 subdomain (namespaces and pod names are at least that strict).
bool k8s_name(const std::string& s) {
  if (s.empty() || s.size() > 253) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  return true;
}

Result<std::string> read_token(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Error::from_errno(errno, "Kubernetes token file " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string t = ss.str();
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
  if (t.empty()) return Error::msg("Kubernetes token file " + path + " is empty", EINVAL);
  return t;
}

size_t on_body(char* p, size_t size, size_t n, void* user) {
  auto* body = static_cast<std::string*>(user);
  if (body->size() + size * n > kMaxBody) return 0;  // aborts the transfer
  body->append(p, size * n);
  return size * n;
}

}  // namespace

struct KubeApiClient::Curl {
  CURL* h = nullptr;
  ~Curl() {
    if (h) curl_easy_cleanup(h);
  }
};

Result<KubeApiOptions> kube_api_in_cluster() {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !*host || !port || !*port)
    return Error::msg("--kube-api=in-cluster: KUBERNETES_SERVICE_HOST/PORT are not set (not running in a pod?)",
                      EINVAL);
  KubeApiOptions o;
  std::string h = host;
  o.server = "https://" + (h.find(':') != std::string::npos ? "[" + h + "]" : h) + ":" + port;
  o.token_file = std::string(kServiceAccountDir) + "/token";
  o.ca_file = std::string(kServiceAccountDir) + "/ca.crt";
  return o;
}

KubeApiClient::KubeApiClient(KubeApiOptions opts) : opts_(std::move(opts)), curl_(std::make_unique<Curl>()) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

KubeApiClient::~KubeApiClient() = default;

Result<protocol::Labels> KubeApiClient::labels(const std::string& ns, const std::string& name) {
  if (!k8s_name(ns) || !k8s_name(name))
    return Error::msg("pod '" + ns + "/" + name + "' is not a Kubernetes namespace/name; cannot look up its labels",
                      EINVAL);
  NS_TRY(std::string token, read_token(opts_.token_file));
  if (!curl_->h) curl_->h = curl_easy_init();  // kept: connection reuse across lookups
  CURL* h = curl_->h;
  if (!h) return Error::msg("curl_easy_init failed", ENOMEM);
  curl_easy_reset(h);
  std::string url = opts_.server + "/api/v1/namespaces/" + ns + "/pods/" + name;
  std::string body;
  std::string auth = "Authorization: Bearer " + token;
  struct curl_slist* headers = curl_slist_append(nullptr, auth.c_str());
  headers = curl_slist_append(headers, "Accept: application/json");
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> headers_owner(headers, curl_slist_free_all);
  char errbuf[CURL_ERROR_SIZE] = {};
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https,http");
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(opts_.timeout.count()));
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts_.timeout.count()));
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  if (!opts_.ca_file.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, opts_.ca_file.c_str());
  CURLcode rc = curl_easy_perform(h);
  std::string where = "Kubernetes API " + opts_.server + " (pod " + ns + "/" + name + ")";
  if (rc != CURLE_OK)
    return Error::msg(where + ": " + (errbuf[0] ? errbuf : curl_easy_strerror(rc)), EAGAIN);
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  if (status == 401 || status == 403)
    return Error::msg(where + ": HTTP " + std::to_string(status) +
                          " (the agent's service account needs 'get' on pods)",
                      EACCES);
  if (status == 404) return Error::msg(where + ": pod not found (yet); the runtime retries", EAGAIN);
  if (status != 200) return Error::msg(where + ": HTTP " + std::to_string(status), EAGAIN);
  auto labels = labels_from_pod_json(body);
  if (!labels.ok()) return std::move(labels).error().wrap(where);
  return labels;
}

Result<protocol::Labels> labels_from_pod_json(std::string_view body) {
  auto j = nlohmann::json::parse(body.begin(), body.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error::msg("malformed Pod object (not a JSON object)", EPROTO);
  protocol::Labels out;
  auto md = j.find("metadata");
  if (md == j.end() || !md->is_object()) return Error::msg("malformed Pod object (no metadata)", EPROTO);
  auto ls = md->find("labels");
  if (ls == md->end() || ls->is_null()) return out;
  if (!ls->is_object()) return Error::msg("malformed Pod object (metadata.labels is not an object)", EPROTO);
  for (const auto& [k, v] : ls->items()) {
    if (!v.is_string()) return Error::msg("malformed Pod object (label '" + k + "' is not a string)", EPROTO);
    out.emplace(k, v.get<std::string>());
  }
  return out;
}

}  // namespace netsteer::agent
