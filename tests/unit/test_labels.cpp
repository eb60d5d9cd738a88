// excludePodLabels: requirement syntax, matching, the Pod JSON parser, the wire format, and the
// agent's answers with a fake label source (the real API client is tested in privileged/test_labels.py).
#include <gtest/gtest.h>

#include "netsteer/agent/control.h"
#include "netsteer/agent/kube_api.h"
#include "netsteer/cni/cni.h"
#include "netsteer/protocol/labels.h"

using namespace netsteer;
using namespace netsteer::protocol;
using nlohmann::json;

TEST(LabelRequirement, ParsesKeysAndValues) {
  auto r = parse_label_requirement("netsteer.io/capture=disabled");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->key, "netsteer.io/capture");
  EXPECT_EQ(r->value, "disabled");
  EXPECT_EQ(r->str(), "netsteer.io/capture=disabled");
  auto e = parse_label_requirement("legacy");
  ASSERT_TRUE(e.ok());
  EXPECT_FALSE(e->value.has_value());
  auto eq2 = parse_label_requirement("app==web");
  ASSERT_TRUE(eq2.ok());
  EXPECT_EQ(eq2->value, "web");
  auto empty_value = parse_label_requirement("tier=");
  ASSERT_TRUE(empty_value.ok());
  EXPECT_EQ(empty_value->value, "");
}

TEST(LabelRequirement, RefusesBadSyntaxNamingIt) {
  for (const char* bad : {"", "=x", "-a", "a-", "UPPER.example/x", "a/b/c", "app!=web", "a=-x", "a b",
                          "k=v with space", "/x", "example.com/"}) {
    auto r = parse_label_requirement(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().message.find("label requirement"), std::string::npos) << r.error().message;
  }
  EXPECT_FALSE(parse_label_requirement(std::string(64, 'a')).ok());
  EXPECT_TRUE(parse_label_requirement(std::string(63, 'a')).ok());
}

TEST(LabelRequirement, Matches) {
  Labels labels{{"app", "web"}, {"netsteer.io/capture", "disabled"}};
  auto reqs = parse_label_requirements({"app=db", "netsteer.io/capture=disabled"});
  ASSERT_TRUE(reqs.ok());
  auto m = first_match(*reqs, labels);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->str(), "netsteer.io/capture=disabled");
  EXPECT_FALSE(first_match(*parse_label_requirements({"app=db", "tier"}), labels).has_value());
  EXPECT_TRUE(first_match(*parse_label_requirements({"app"}), labels).has_value());
  EXPECT_FALSE(first_match(*reqs, {}).has_value());
}

TEST(PodJson, LabelsAndMalformedObjects) {
  auto l = agent::labels_from_pod_json(R"({"kind":"Pod","metadata":{"name":"a","labels":{"app":"web","x":""}}})");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->size(), 2u);
  EXPECT_EQ(l->at("app"), "web");
  auto none = agent::labels_from_pod_json(R"({"metadata":{"name":"a"}})");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  for (const char* bad : {"", "[]", "{", R"({"kind":"Pod"})", R"({"metadata":{"labels":[1]}})",
                          R"({"metadata":{"labels":{"a":1}}})"}) {
    auto r = agent::labels_from_pod_json(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, EPROTO) << bad;
  }
}

TEST(Wire, SkipLabelsRoundTripAndValidation) {
  Request req;
  req.type = MsgType::kAdd;
  req.pod.uid = "p1";
  req.pod.skip_labels = {"app=legacy", "netsteer.io/skip"};
  auto back = decode_request(encode_request(req));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->pod.skip_labels, req.pod.skip_labels);
  auto bad = decode_request(R"({"type":"add","version":1,"pod":{"uid":"p1","skip_labels":["a!=b"]}})");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("skip_labels"), std::string::npos);
  EXPECT_FALSE(decode_request(R"({"type":"add","version":1,"pod":{"uid":"p1","skip_labels":"app"}})").ok());
  // check may carry the pod (for its skip_labels); its uid must be the checked one
  Request chk;
  chk.type = MsgType::kCheck;
  chk.uid = "p1";
  chk.pod.uid = "p1";
  chk.pod.namespace_ = "prod";
  chk.pod.name = "web-0";
  chk.pod.skip_labels = {"app=legacy"};
  auto c = decode_request(encode_request(chk));
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->pod.skip_labels, chk.pod.skip_labels);
  EXPECT_FALSE(decode_request(R"({"type":"check","version":1,"uid":"p1","pod":{"uid":"p2"}})").ok());
}

TEST(CniNetconfLabels, ParsedAndValidated) {
  json j = json::parse(R"({"cniVersion":"1.0.0","name":"k8s","type":"netsteer-cni",
                           "excludePodLabels":["netsteer.io/capture=disabled","legacy"]})");
  auto c = cni::parse_netconf(j.dump());
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->exclude_pod_labels.size(), 2u);
  j["excludePodLabels"] = json::array({"Bad Key"});
  auto bad = cni::parse_netconf(j.dump());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, cni::kInvalidConfig);
  EXPECT_NE(bad.error().message.find("excludePodLabels"), std::string::npos);
  j["excludePodLabels"] = "legacy";
  EXPECT_EQ(cni::parse_netconf(j.dump()).error().code, cni::kInvalidConfig);
}

namespace {

class FakeLabels : public agent::PodLabelSource {
 public:
  Result<Labels> labels(const std::string& ns, const std::string& name) override {
    ++calls;
    if (fail) return *fail;
    auto it = pods.find(ns + "/" + name);
    if (it == pods.end()) return Error::msg("pod not found (yet)", EAGAIN);
    return it->second;
  }
  std::map<std::string, Labels> pods;
  std::optional<Error> fail;
  int calls = 0;
};

Reply check(agent::RequestHandler& h, const std::string& ns, const std::string& name,
            std::vector<std::string> skip) {
  Request req;
  req.type = MsgType::kCheck;
  req.uid = "uid-" + name;
  req.pod.uid = req.uid;
  req.pod.namespace_ = ns;
  req.pod.name = name;
  req.pod.skip_labels = std::move(skip);
  Packet pk;
  pk.data = encode_request(req);
  return h.handle(pk);
}

}  // namespace

TEST(HandlerLabels, CheckAnswersSkippedPodsFromTheirLabels) {
  netns::NetnsExecutor exec{1};
  agent::EnrolmentManager mgr{exec};
  FakeLabels src;
  src.pods["prod/legacy-0"] = {{"app", "legacy"}};
  src.pods["prod/web-0"] = {{"app", "web"}};
  agent::RequestHandler h{mgr, nullptr, &src};
  Reply skipped = check(h, "prod", "legacy-0", {"app=legacy"});
  ASSERT_TRUE(skipped.ok) << skipped.error;
  EXPECT_NE(skipped.data.value("skipped", "").find("app=legacy"), std::string::npos);
  Reply captured = check(h, "prod", "web-0", {"app=legacy"});  // not skipped, and not enrolled either
  EXPECT_FALSE(captured.ok);
  EXPECT_EQ(captured.err_no, ENOENT);
  src.fail = Error::msg("Kubernetes API down", EAGAIN);
  Reply down = check(h, "prod", "legacy-0", {"app=legacy"});
  EXPECT_FALSE(down.ok);
  EXPECT_EQ(down.err_no, EAGAIN);
  EXPECT_NE(down.error.find("API down"), std::string::npos);
  agent::RequestHandler no_api{mgr, nullptr};
  Reply refused = check(no_api, "prod", "legacy-0", {"app=legacy"});
  EXPECT_FALSE(refused.ok);
  EXPECT_NE(refused.error.find("--kube-api"), std::string::npos);
  EXPECT_EQ(mgr.size(), 0u);
}

TEST(KubeApi, RefusesNonKubernetesNamesWithoutARequest) {
  agent::KubeApiClient c({"https://127.0.0.1:1", "/nonexistent", "", std::chrono::milliseconds(100)});
  auto r = c.labels("prod", "../../secrets");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, EINVAL);
  auto t = c.labels("prod", "web-0");  // token file missing: named
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("token file"), std::string::npos);
}
