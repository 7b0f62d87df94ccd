# Sourced by the scripts: one place for the cache location and the dependency installs.
# Every install is idempotent: it checks first and installs only what is missing.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export VM_TOOLS_CACHE=${VM_TOOLS_CACHE:-$HOME/.cache/vm_tools}
# One target dir for every checkout on this machine: the gRPC C-core (7-10 min to build)
# is then compiled once, not once per clone.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$VM_TOOLS_CACHE/target}
export PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$VM_TOOLS_CACHE"

log() { printf '==> %s\n' "$*" >&2; }

# apt_need PKG... : installs the Debian packages that are not installed yet.
apt_need() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

# cargo_need BIN CRATE [ARGS...] : cargo-installs CRATE unless BIN is on PATH.
cargo_need() {
    local bin=$1 crate=$2
    shift 2
    command -v "$bin" >/dev/null && return 0
    log "installing $crate with cargo"
    cargo install --locked "$crate" "$@" >&2
}

# What building the workspace needs: the gRPC C-core wants cmake and a C++ compiler.
need_build_deps() {
    apt_need cmake g++ make pkg-config
}

# The guest programs: maitred, vm_syslog and crash_sender as ONE static multi-call binary,
# vm_tools_guest (guest/), so the gRPC C-core is in the image once, not three times, and
# crash_collector without gRPC (its default), a small binary of its own. Static
# (glibc's static-pie links grpcio's C-core fine), in a target dir of its own because
# RUSTFLAGS differ from the host build's. The final link only (cargo rustc) packs the
# relative relocations (-z pack-relative-relocs, glibc >= 2.36): a static-pie keeps ASLR and
# drops ~370 KB of .rela.dyn, without recompiling the C-core. The `guest` profile
# (Cargo.toml) optimises for size and aborts on a panic. Called in $(…), where set -e does
# not hold: a failed build returns its status, so no image is made from stale binaries.
GUEST_TARGET=x86_64-unknown-linux-gnu
GUEST_TARGET_DIR="$VM_TOOLS_CACHE/target-guest"
build_guest_programs() {
    need_build_deps
    log "building the guest programs (one static multi-call binary)"
    CARGO_TARGET_DIR="$GUEST_TARGET_DIR" RUSTFLAGS='-C target-feature=+crt-static' \
        cargo rustc --profile guest --target "$GUEST_TARGET" -p vm_tools_guest --bin vm_tools_guest \
        -- -C link-arg=-Wl,-z,pack-relative-relocs >&2 || return
    CARGO_TARGET_DIR="$GUEST_TARGET_DIR" RUSTFLAGS='-C target-feature=+crt-static' \
        cargo rustc --profile guest --target "$GUEST_TARGET" -p crash_collector \
        --bin crash_collector -- -C link-arg=-Wl,-z,pack-relative-relocs >&2 || return
    echo "$GUEST_TARGET_DIR/$GUEST_TARGET/guest"
}

# What booting a VM needs: QEMU, and vhost-device-vsock for vsock without /dev/vhost-vsock.
need_vm_deps() {
    need_build_deps
    apt_need qemu-system-x86 busybox-static rsyslog
    cargo_need vhost-device-vsock vhost-device-vsock
}

# What the crash_collector tests need besides gcc and gdb: minidump-stackwalk reads the
# minidumps they write.
need_crash_test_deps() {
    # The crash tests build a C program and catch its crash under gdb (gcore, readelf).
    apt_need gcc gdb binutils
    cargo_need minidump-stackwalk minidump-stackwalk
}
