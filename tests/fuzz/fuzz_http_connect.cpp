// libFuzzer target: the HTTP/1.1 CONNECT request parser of the 15008 tunnel (remote input).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "netsteer/relay/http_connect.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = netsteer::relay::parse_connect(in);
  if (r && r->ok() && r->value().head_len > size) __builtin_trap();  // consumed more than given
  return 0;
}
