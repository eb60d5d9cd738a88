// The agent's system-call allow-list (libseccomp), installed after the capability drop.
//
// Anything not listed fails with EPERM (not a kill: a syscall forgotten here becomes a clear error
// on one path, never a dead node agent); `log` mode allows and audit-logs it instead, to find out.
// Not listed, among others: execve/execveat (the agent never runs programs), ptrace,
// process_vm_*, kexec_*, init/finit/delete_module, reboot, swapon, keyctl, add_key,
// userfaultfd, perf_event_open, open_by_handle_at, bpf is allowed (it is the agent's job).
#pragma once

#include <string>
#include <vector>

#include "netsteer/common/result.h"

namespace netsteer::agent {

enum class SeccompMode { kOff, kEnforce, kLog };
Result<SeccompMode> parse_seccomp_mode(std::string_view s);

// The syscalls the agent needs (names; ones unknown to this architecture are skipped).
const std::vector<std::string>& seccomp_allowed();

// Installs the filter on every thread of the process (TSYNC). Needs no_new_privs or CAP_SYS_ADMIN.
Status install_seccomp(SeccompMode mode);

}  // namespace netsteer::agent
