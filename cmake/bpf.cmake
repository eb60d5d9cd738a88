# netsteer_bpf_skeleton(<name> <src.bpf.c>)
# Compiles a BPF C file with clang (-target bpf -g -O2) against the checked-in vmlinux.h and the
# shared headers in bpf/, then generates <build>/include/netsteer/skel/<name>.skel.h with
# `bpftool gen skeleton`. Rebuilds when any header under bpf/ or vmlinux/ changes.
find_program(NETSTEER_CLANG NAMES clang clang-14 REQUIRED)
find_program(NETSTEER_BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin REQUIRED)

file(GLOB NETSTEER_BPF_HEADERS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/bpf/*.h)
set(NETSTEER_VMLINUX_DIR ${CMAKE_SOURCE_DIR}/vmlinux/x86)

function(netsteer_bpf_skeleton name src)
  set(obj ${CMAKE_BINARY_DIR}/bpf/${name}.bpf.o)
  set(skel_dir ${CMAKE_BINARY_DIR}/include/netsteer/skel)
  # bpftool names the skeleton after the object; strip the ".bpf" part of "<name>.bpf".
  string(REGEX REPLACE "\\.bpf$" "" base ${name})
  set(skel ${skel_dir}/${base}.skel.h)
  add_custom_command(
    OUTPUT ${obj}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/bpf
    COMMAND ${NETSTEER_CLANG} -target bpf -g -O2 -D__TARGET_ARCH_x86 -Wall -Werror
            -I${NETSTEER_VMLINUX_DIR} -I${CMAKE_SOURCE_DIR}/bpf -c ${src} -o ${obj}
    DEPENDS ${src} ${NETSTEER_BPF_HEADERS} ${NETSTEER_VMLINUX_DIR}/vmlinux.h
    COMMENT "BPF ${name}"
    VERBATIM)
  add_custom_command(
    OUTPUT ${skel}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${skel_dir}
    COMMAND sh -c "${NETSTEER_BPFTOOL} gen skeleton ${obj} name ${base} > ${skel}.tmp && mv ${skel}.tmp ${skel}"
    DEPENDS ${obj}
    COMMENT "skeleton ${base}.skel.h"
    VERBATIM)
  set(NETSTEER_SKEL_${name} ${skel} PARENT_SCOPE)
endfunction()
