// libFuzzer target: the control-protocol decoders (what any local peer can send the agent).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "netsteer/protocol/messages.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto req = netsteer::protocol::decode_request(in);
  if (req.ok()) {
    // What decodes must re-encode and decode to the same request type.
    auto again = netsteer::protocol::decode_request(netsteer::protocol::encode_request(*req));
    if (!again.ok() || again->type != req->type) __builtin_trap();
  }
  (void)netsteer::protocol::decode_reply(in);
  return 0;
}
