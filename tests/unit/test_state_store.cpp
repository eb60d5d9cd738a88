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

namespace {

std::vector<std::string> uids(const std::vector<PodRecord>& recs) {
  std::vector<std::string> out;
  for (const auto& r : recs) out.push_back(r.spec.uid + (r.pending ? "*" : ""));
  return out;
}

}  // namespace

TEST(StateStore, JournalAppendsReplayOverTheSnapshot) {
  TempDir d;
  StateStore store(d.path);
  EXPECT_FALSE(store.append_put(serialize_record(record("x", 1, false))).ok()) << "no journal before a save";
  std::string a = serialize_record(record("a", 11, false));
  ASSERT_TRUE(store.save({a}).ok());
  auto snapshot = std::filesystem::file_size(store.path());
  ASSERT_TRUE(store.append_put(serialize_record(record("b", 12, true))).ok());   // b pending
  ASSERT_TRUE(store.append_put(serialize_record(record("b", 12, false))).ok());  // b done
  ASSERT_TRUE(store.append_put(serialize_record(record("c", 13, false))).ok());
  ASSERT_TRUE(store.append_del("a").ok());
  EXPECT_EQ(store.journal_entries(), 4u);
  EXPECT_EQ(std::filesystem::file_size(store.path()), snapshot) << "appends never rewrite the snapshot";
  auto loaded = store.load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(uids(*loaded), (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ((*loaded)[0].netns.ino, 12u);

  // Compaction: the set as a new snapshot, an empty journal.
  std::vector<std::string> now{serialize_record((*loaded)[0]), serialize_record((*loaded)[1])};
  ASSERT_TRUE(store.save({now.begin(), now.end()}).ok());
  EXPECT_EQ(store.journal_entries(), 0u);
  loaded = store.load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(uids(*loaded), (std::vector<std::string>{"b", "c"}));
}

TEST(StateStore, TornLastLineIsIgnoredCorruptMiddleLineIsAnError) {
  TempDir d;
  StateStore store(d.path);
  ASSERT_TRUE(store.save({}).ok());
  ASSERT_TRUE(store.append_put(serialize_record(record("a", 11, true))).ok());
  { std::ofstream(store.journal_path(), std::ios::app) << "{\"put\":{\"pod\":{\"uid\":\"b"; }  // a crash mid-append
  auto loaded = store.load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(uids(*loaded), (std::vector<std::string>{"a*"}));
  { std::ofstream(store.journal_path(), std::ios::app) << "\n{\"del\":\"a\"}\n"; }  // now the torn line is in the middle
  loaded = store.load();
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.error().message.find("corrupt"), std::string::npos) << loaded.error().message;
}

TEST(StateStore, JournalOfAnOlderGenerationIsNotReplayed) {
  // A crash after a compaction wrote its snapshot and before it replaced the journal: the old
  // journal's operations are in the snapshot already and must not be applied twice.
  TempDir d;
  StateStore store(d.path);
  ASSERT_TRUE(store.save({}).ok());
  ASSERT_TRUE(store.append_put(serialize_record(record("a", 11, false))).ok());
  ASSERT_TRUE(store.append_del("a").ok());
  std::string old_journal;
  {
    std::ifstream f(store.journal_path());
    old_journal.assign(std::istreambuf_iterator<char>(f), {});
  }
  std::string a2 = serialize_record(record("a", 21, false));
  ASSERT_TRUE(store.save({a2}).ok());                           // snapshot: a (ino 21)
  std::ofstream(store.journal_path(), std::ios::trunc) << old_journal;  // the old journal is back
  auto loaded = store.load();
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  ASSERT_EQ(uids(*loaded), (std::vector<std::string>{"a"}));
  EXPECT_EQ((*loaded)[0].netns.ino, 21u);

  // A new store (the next agent) continues with a higher generation.
  StateStore next(d.path);
  ASSERT_TRUE(next.save({a2}).ok());
  ASSERT_TRUE(next.append_del("a").ok());
  loaded = next.load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->empty());
}
