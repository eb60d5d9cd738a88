// Accepting without spinning when the process is out of file descriptors.
//
// With level-triggered (or EPOLLEXCLUSIVE) listeners, EMFILE/ENFILE leaves the connection in the
// accept queue and epoll reports it again at once: a busy loop that also floods the log. Each
// thread keeps one reserve descriptor; when accept fails for lack of fds it frees the reserve,
// accepts the connection, resets it (the peer sees a refusal, not a hang) and re-takes the reserve.
// If another thread took the freed number first, the reserve is taken again at this thread's next
// successful accept.
#pragma once

#include <sys/socket.h>

#include "netsteer/common/unique_fd.h"

namespace netsteer {

enum class AcceptResult { accepted, again, shed, error };

struct Accepted {
  AcceptResult result;
  UniqueFd fd;  // valid when result == accepted
  int err = 0;  // errno for shed/error
};

// Opens count reserve descriptors now, for prepare_accept_reserve to hand out. Called at start-up,
// before the process opens anything else, so the reserves hold its lowest fd numbers: a reserve
// freed under EMFILE is then a number the shed's accept may take even when the limit has been
// lowered since (prlimit), while one opened later (a thread starting after the agent had loaded
// its BPF objects) could sit above the limit and free nothing usable.
void reserve_accept_fds(unsigned count);

// Takes this thread's reserve descriptor now (call at thread start): one from reserve_accept_fds'
// pool if any is left, else a new one.
void prepare_accept_reserve();

// accept4(listen_fd, peer, plen, flags); sheds the connection on EMFILE/ENFILE/ENOBUFS/ENOMEM.
Accepted accept_or_shed(int listen_fd, sockaddr* peer, socklen_t* plen, int flags);

// Raises the soft RLIMIT_NOFILE to the hard limit. Returns the new soft limit.
unsigned long raise_nofile_limit();

// Grows this process's fd table now to hold min(want, the soft limit) descriptors; returns the
// size it has (FDSize in /proc/self/status). The table only ever grows, and in a process with
// more than one thread each doubling waits out an RCU grace period (expand_files): ~10 ms on a
// node booted with rcu_expedited=0, taken by whichever thread opened the fd that did not fit (an
// enrol's socket, a relay worker's accept). Called before any thread exists, it costs no wait.
// Kernel memory: 8 bytes per slot plus bitmaps (~530 KiB for 65,536).
unsigned long presize_fd_table(unsigned long want);

}  // namespace netsteer
