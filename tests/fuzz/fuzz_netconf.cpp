// libFuzzer target: netsteer-cni's netconf/prevResult parser and CNI_ARGS (runtime-supplied input).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "netsteer/cni/cni.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto conf = netsteer::cni::parse_netconf(in);
  if (conf.ok() && !conf->prev_result.is_null() && !netsteer::cni::result_ips(conf->prev_result).ok())
    __builtin_trap();  // parse_netconf validated prevResult: it must stay valid
  auto args = netsteer::cni::parse_cni_args(in);
  if (args.ok()) {
    netsteer::cni::Env env{"ADD", std::string(in.substr(0, 80)), "/x", "eth0", *args};
    if (!netsteer::protocol::validate_uid(netsteer::cni::pod_key(env)).ok() && env.pod_uid().empty() &&
        !env.container_id.empty() && netsteer::cni::pod_key(env) != "c-")
      __builtin_trap();  // a key derived from the container id is always a valid uid
  }
  (void)netsteer::cni::glob_match(in.substr(0, size / 2), in.substr(size / 2));
  return 0;
}
