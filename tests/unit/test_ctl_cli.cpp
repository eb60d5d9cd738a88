// netsteerctl's command line: `--help` alone takes a short path (the top-level help printed before
// the subcommands' options are built); it must print exactly what CLI11's own parse prints.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <sys/wait.h>

namespace {

struct CtlRun {
  std::string out;
  int status = -1;
};

CtlRun run_ctl(const std::string& args) {
  CtlRun r;
  FILE* p = ::popen((std::string(NETSTEERCTL_BIN) + " " + args + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

TEST(CtlCli, HelpAloneIsCli11sOwnHelp) {
  // With a global option before it, --help goes through CLI11's parse (the options all built).
  CtlRun full = run_ctl("--timeout-ms 10000 --help");
  ASSERT_EQ(full.status, 0) << full.out;
  for (const char* a : {"--help", "-h"}) {
    CtlRun fast = run_ctl(a);
    EXPECT_EQ(fast.status, 0) << a;
    EXPECT_EQ(fast.out, full.out) << a;
  }
  for (const char* sub : {"enroll", "unenroll", "list", "status", "inspect", "exec", "conns", "snapshot"})
    EXPECT_NE(full.out.find(std::string("\n  ") + sub), std::string::npos) << sub << " missing from:\n" << full.out;
  EXPECT_NE(full.out.find("Usage: " NETSTEERCTL_BIN " [OPTIONS] SUBCOMMAND"), std::string::npos) << full.out;
}

TEST(CtlCli, SubcommandHelpAndErrorsStillParse) {
  CtlRun sub = run_ctl("enroll --help");
  EXPECT_EQ(sub.status, 0);
  EXPECT_NE(sub.out.find("--netns"), std::string::npos) << sub.out;
  EXPECT_NE(sub.out.find("--proxy-pod-tlvs"), std::string::npos) << sub.out;
  CtlRun none = run_ctl("");
  EXPECT_NE(none.status, 0);
  EXPECT_NE(none.out.find("A subcommand is required"), std::string::npos) << none.out;
  CtlRun bad = run_ctl("--bogus");  // one argument, but not help: CLI11's parse answers it
  EXPECT_NE(bad.status, 0) << bad.out;
  EXPECT_NE(bad.out.find("Run with --help"), std::string::npos) << bad.out;
}

}  // namespace
