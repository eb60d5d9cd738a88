#pragma once
// Where one plugin run spends its time, for the pod start-up profile (bench/bench.py): the time at
// each mark, CLOCK_MONOTONIC, written as one JSON line appended to the file NETSTEER_CNI_TRACE
// names, and nothing at all when it is unset.
#include <string>

namespace netsteer::cni::trace {

enum Mark { kMain, kConnect, kReply, kEnd, kMarks };

// Records now for m.
void mark(Mark m);

// Appends {"id": container_id, "main": ns, "connect": ns, "reply": ns, "end": ns} (a mark never
// reached is 0) when NETSTEER_CNI_TRACE is set; a file that cannot be written is ignored: the trace
// never changes what the plugin does.
void write(const std::string& container_id);

}  // namespace netsteer::cni::trace
