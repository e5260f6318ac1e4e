#!/usr/bin/env bash
# Optional system parts some tests need. `make test` runs this first: as root it installs what is missing
# with apt; otherwise it says what to install, and the tests that need it skip with the same message
# (in CI, where we are root, they never skip: a missing tool fails the test).
#   scripts/system-deps.sh            the aarch64 cross compiler, qemu and clang (NEON and clang tests), Mesa's
#                                     lavapipe (WebGPU),
#                                     Debian's PoCL (the CPU OpenCL for cuda-cpu; see docs/drivers.md)
#   scripts/system-deps.sh browser    chromium and a font (make test-browser)
set -u
need=()
have() { command -v "$1" >/dev/null 2>&1; }
if [ "${1:-}" = browser ]; then
  have chromium || need+=(chromium fonts-dejavu-core)
else
  have aarch64-linux-gnu-gcc || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)  # NEON build
  have qemu-aarch64 || need+=(qemu-user)                                           # ...run under qemu
  have clang || need+=(clang)                                                      # the C builds with clang
  # Mesa's lavapipe: a Vulkan driver on the CPU, so the WebGPU kernels run without a GPU
  [ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -e /usr/share/vulkan/icd.d/lvp_icd.aarch64.json ] \
    || need+=(mesa-vulkan-drivers libvulkan1)
  # PoCL 3.1 / LLVM 15: the wheel's PoCL (LLVM 14) cannot build for AMD Zen 5; chordlab probes both and picks one
  [ -e /etc/OpenCL/vendors/pocl.icd ] || need+=(pocl-opencl-icd)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && have apt-get; then
  echo "system-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || { echo "system-deps: apt-get install failed" >&2; exit 1; }
else
  echo "system-deps: missing ${need[*]}; tests that need them will be skipped." \
       "Install with: sudo apt-get install ${need[*]}"
fi
