// The agent's state file: what save() writes, load() reads back record for record; a corrupt file
// is an error, a missing one an empty list; the netns cookie round-trips and a record of an older
// agent (no cookie) loads with cookie 0, which identity treats as unknown.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "netsteer/agent/state_store.h"

using namespace netsteer;
using namespace netsteer::agent;

namespace {

struct TempDir {
  std::string path = "/tmp/netsteer-unit-state-" + std::to_string(::getpid());
  ~TempDir() { std::filesystem::remove_all(path); }
};

PodRecord record(const std::string& uid, uint64_t ino, bool pending) {
  PodRecord r;
  r.spec.uid = uid;
  r.spec.name = uid + "-name";
  r.spec.namespace_ = "ns \"quoted\"";
  r.spec.netns_path = "/var/run/netns/" + uid;
  r.spec.strict = !pending;
  r.netns = {7, ino, ino * 1000 + 1};
  r.pending = pending;
  r.capture = {{"tc_mode", "tcx"}, {"guarded_ifindexes", {2, 3}}};
  return r;
}

}  // namespace

TEST(StateStore, SavedRecordsLoadBackAsTheyWere) {
  TempDir d;
  StateStore store(d.path);
  auto loaded = store.load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->empty()) << "a missing file is an empty list";

  std::vector<PodRecord> recs{record("a", 11, false), record("b", 12, false), record("c", 13, true)};
  std::vector<std::string> ser;
  for (const auto& r : recs) ser.push_back(serialize_record(r));
  ASSERT_TRUE(store.save({ser.begin(), ser.end()}).ok());
  loaded = store.load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  ASSERT_EQ(loaded->size(), 3u);
  for (size_t i = 0; i < recs.size(); ++i) {
    const auto& got = (*loaded)[i];
    EXPECT_EQ(got.spec.uid, recs[i].spec.uid);
    EXPECT_EQ(got.spec.name, recs[i].spec.name);
    EXPECT_EQ(got.spec.namespace_, recs[i].spec.namespace_);
    EXPECT_EQ(got.spec.netns_path, recs[i].spec.netns_path);
    EXPECT_EQ(got.spec.strict, recs[i].spec.strict);
    EXPECT_EQ(got.netns.dev, 7u);
    EXPECT_EQ(got.netns.ino, recs[i].netns.ino);
    EXPECT_EQ(got.netns.cookie, recs[i].netns.cookie);
    EXPECT_NE(got.netns.cookie, 0u);
    EXPECT_EQ(got.pending, recs[i].pending);
    EXPECT_EQ(got.capture, recs[i].capture);
  }

  ASSERT_TRUE(store.save({}).ok());
  loaded = store.load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->empty());

  std::ofstream(store.path()) << "{\"version\":1,\"pods\":[{\"pod\":";
  loaded = store.load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.error().message.find("corrupt"), std::string::npos) << loaded.error().message;
}

TEST(StateStore, NetnsCookieRoundTripsAndOldRecordsLoadWithoutOne) {
  PodRecord r = record("a", 11, false);
  r.netns.cookie = 0xfedcba9876543210ULL;  // the full 64 bits survive JSON
  nlohmann::json j = record_to_json(r);
  EXPECT_EQ(j.at("netns_cookie").get<uint64_t>(), r.netns.cookie);
  auto back = record_from_json(nlohmann::json::parse(serialize_record(r)));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->netns.dev, 7u);
  EXPECT_EQ(back->netns.ino, 11u);
  EXPECT_EQ(back->netns.cookie, r.netns.cookie);

  // A state file written before the cookie was recorded.
  TempDir d;
  StateStore store(d.path);
  std::filesystem::create_directories(d.path);
  j.erase("netns_cookie");
  std::ofstream(store.path()) << nlohmann::json{{"version", 1}, {"pods", {j}}}.dump();
  auto loaded = store.load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  ASSERT_EQ(loaded->size(), 1u);
  EXPECT_EQ((*loaded)[0].spec.uid, "a");
  EXPECT_EQ((*loaded)[0].netns.ino, 11u);
  EXPECT_EQ((*loaded)[0].netns.cookie, 0u);
}

TEST(NetnsId, CookieDecidesWhenBothSidesKnowIt) {
  using netns::NetnsId;
  EXPECT_EQ((NetnsId{7, 11, 5}), (NetnsId{7, 11, 5}));
  EXPECT_FALSE((NetnsId{7, 11, 5}) == (NetnsId{7, 11, 6})) << "same inode, another netns";
  EXPECT_EQ((NetnsId{7, 11, 0}), (NetnsId{7, 11, 6})) << "cookie 0 = unknown: dev+inode decide";
  EXPECT_EQ((NetnsId{7, 11, 6}), (NetnsId{7, 11, 0}));
  EXPECT_FALSE((NetnsId{7, 12, 0}) == (NetnsId{7, 11, 0}));
  EXPECT_FALSE((NetnsId{8, 11, 6}) == (NetnsId{7, 11, 6}));
}
