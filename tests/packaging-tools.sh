#!/usr/bin/env bash
# The Buildroot package and the Yocto layer, checked with Buildroot and BitBake themselves
# (make test-packaging; see mk/packaging.mk for what runs and how far). Every check runs or fails:
# nothing here is skipped.
#
# Sources: BUILDROOT_SRC, OE_CORE_SRC + BITBAKE_SRC (one oe-core release) when given; else the
# archives in ../shared/upstream; else clones of the same releases.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
upstream=${UPSTREAM_DIR:-$repo/../shared/upstream}
bitbake_task=${BITBAKE_TASK:-unpack}
bb_user=${BITBAKE_USER:-tunnel-agent-bitbake}
br_target=aarch64-unknown-linux-musl

passed=0
step() { printf '\n== %s\n' "$*"; }
ok() { passed=$((passed + 1)); printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

work=$(mktemp -d /tmp/tunnel-agent-packaging.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
echo "work directory: $work"

step "host tools"
# Buildroot's own dependency check and check-package (python3-magic, flake8, shellcheck);
# BitBake's host tools and the UTF-8 locale it wants; unshare for the offline build.
pkgs=(build-essential bc bzip2 chrpath cpio diffstat file gawk git locales lz4 patch perl
  python3 python3-flake8 python3-magic rsync shellcheck unzip util-linux wget xz-utils zstd)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq || echo "apt-get update failed in part; installing from the lists there are"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! locale -a | grep -qix 'en_US.utf-\?8'; then
  as_root sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
  grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' | as_root tee -a /etc/locale.gen >/dev/null
  as_root locale-gen >/dev/null
fi
locale -a | grep -qix 'en_US.utf-\?8' || fail "the en_US.UTF-8 locale could not be generated"
# Debian's python3, which has the modules installed above (a pyenv python3 may come first in PATH).
py=/usr/bin/python3

step "sources"
# unpack NAME ARCHIVE-OR-DIR DEST: a directory is used as it is, an archive is unpacked.
fetch() {
  local name=$1 from=$2 dest=$3
  if [ -d "$from" ]; then cp -a "$from" "$dest"
  else mkdir -p "$dest" && tar xf "$from" -C "$dest" --strip-components=1; fi
  echo "$name: $from"
}
clone() { git clone -q --depth 1 --branch "$2" "$1" "$3" && echo "$(basename "$3"): $1 $2"; }
releases=()
if [ -n "${BUILDROOT_SRC:-}" ]; then fetch buildroot "$BUILDROOT_SRC" "$work/buildroot"
elif [ -d "$upstream" ]; then fetch buildroot "$upstream/buildroot-2026.02.3.tar.xz" "$work/buildroot"
else clone https://gitlab.com/buildroot.org/buildroot.git 2026.02.3 "$work/buildroot"; fi
if [ -n "${OE_CORE_SRC:-}" ]; then
  [ -n "${BITBAKE_SRC:-}" ] || fail "OE_CORE_SRC is set but BITBAKE_SRC is not: both are needed"
  fetch oe-core "$OE_CORE_SRC" "$work/oe-given"
  fetch bitbake "$BITBAKE_SRC" "$work/oe-given/bitbake"
  releases=(given)
elif [ -d "$upstream" ]; then
  for r in scarthgap:2.8 wrynose:2.18; do
    fetch "oe-core ${r%%:*}" "$upstream/openembedded-core-${r%%:*}.tar.xz" "$work/oe-${r%%:*}"
    fetch "bitbake ${r##*:}" "$upstream/bitbake-${r##*:}.tar.xz" "$work/oe-${r%%:*}/bitbake"
    releases+=("${r%%:*}")
  done
else
  for r in scarthgap:2.8 wrynose:2.18; do
    clone https://git.openembedded.org/openembedded-core "${r%%:*}" "$work/oe-${r%%:*}"
    clone https://git.openembedded.org/bitbake "${r##*:}" "$work/oe-${r%%:*}/bitbake"
    releases+=("${r%%:*}")
  done
fi

# ---- Buildroot ---------------------------------------------------------------------------
br=$work/buildroot
out=$work/br-out
export BR2_DL_DIR=$work/br-dl
brmake() { make -C "$br" O="$out" BR2_EXTERNAL="$repo/buildroot" "$@"; }
# var NAME: one variable from printvars.
var() { brmake -s --no-print-directory printvars VARS="$1" | sed -n "s/^$1=//p"; }
config_has() { grep -qx "$1" "$out/.config" || fail "Buildroot .config lacks '$1'"; }

step "Buildroot: check-package"
report=$(cd "$br" && "$py" utils/check-package -b "$repo"/buildroot/package/tunnel-agent/* \
  "$repo"/buildroot/Config.in "$repo"/buildroot/external.mk "$repo"/buildroot/external.desc 2>&1) \
  || fail "check-package:
$report"
printf '%s\n' "$report"
grep -qx '0 warnings generated' <<<"$report" || fail "check-package reported warnings"
ok "check-package: 0 warnings"

step "Buildroot: configuration (a Raspberry Pi 4, 64-bit, musl toolchain)"
brmake -s raspberrypi4_64_defconfig >/dev/null
# The Bootlin musl toolchain, so that Buildroot's Rust target is the one `make cross` builds.
sed -i -e '/^BR2_TOOLCHAIN_EXTERNAL_BOOTLIN_AARCH64_GLIBC_STABLE=y/d' \
  -e '/BR2_TOOLCHAIN_EXTERNAL_BOOTLIN_AARCH64_MUSL_STABLE\b/d' -e '/BR2_PACKAGE_TUNNEL_AGENT\b/d' "$out/.config"
printf '%s\n' BR2_TOOLCHAIN_EXTERNAL_BOOTLIN_AARCH64_MUSL_STABLE=y BR2_PACKAGE_TUNNEL_AGENT=y \
  >>"$out/.config"
brmake -s olddefconfig >/dev/null
config_has BR2_PACKAGE_TUNNEL_AGENT=y
config_has BR2_PACKAGE_TUNNEL_AGENT_TLS=y
config_has BR2_PACKAGE_HOST_RUSTC=y
config_has BR2_TOOLCHAIN_EXTERNAL_BOOTLIN_AARCH64_MUSL_STABLE=y
[ "$(var RUSTC_TARGET_NAME)" = "$br_target" ] || fail "Buildroot's Rust target is $(var RUSTC_TARGET_NAME), not $br_target"
ok "olddefconfig, TLS on: the package, its TLS option and host-rustc are in .config"

step "Buildroot: printvars and show-depends"
head=$(git -C "$repo" rev-parse HEAD)
[ "$(var TUNNEL_AGENT_VERSION)" = "$head" ] || fail "TUNNEL_AGENT_VERSION is '$(var TUNNEL_AGENT_VERSION)', not HEAD ($head)"
[ "$(var TUNNEL_AGENT_SITE_METHOD)" = git ] || fail "TUNNEL_AGENT_SITE_METHOD is not git"
[ "$(var TUNNEL_AGENT_DOWNLOAD_POST_PROCESS)" = cargo ] || fail "the download step does not vendor the crates"
[ "$(var TUNNEL_AGENT_CARGO_BUILD_OPTS)" = "--bin tunnel-agent" ] || fail "TLS on: cargo options are '$(var TUNNEL_AGENT_CARGO_BUILD_OPTS)'"
brmake -s --no-print-directory printvars VARS='TUNNEL_AGENT_VERSION TUNNEL_AGENT_SITE% TUNNEL_AGENT_SOURCE TUNNEL_AGENT_DOWNLOAD_POST_PROCESS TUNNEL_AGENT_CARGO_BUILD_OPTS TUNNEL_AGENT_CARGO_ENV'
deps=$(brmake -s --no-print-directory tunnel-agent-show-depends)
echo "show-depends: $deps"
for d in host-rustc toolchain; do grep -qw -- "$d" <<<"$deps" || fail "show-depends lacks $d"; done
ok "printvars and show-depends"

# Buildroot downloads its host Rust, host tar and the Bootlin toolchain from the internet, which
# this machine cannot reach. So that the package's own steps still run, those three are marked
# built and stood in for by this machine's equivalents: rustup's cargo and rustc, Debian's tar,
# and Debian's aarch64 cross gcc (the linker `make cross` uses for this target). Everything of
# the package itself is Buildroot's: the git download, the cargo vendoring, the extraction, the
# build with Buildroot's cargo environment, the installation into the target directory.
stand_in() {
  local dir s
  for dir in $(brmake -s --no-print-directory printvars VARS='HOST_RUST_BIN_DIR HOST_RUSTC_DIR
    HOST_TAR_DIR HOST_SKELETON_DIR TOOLCHAIN_DIR TOOLCHAIN_EXTERNAL_DIR TOOLCHAIN_EXTERNAL_BOOTLIN_DIR
    MUSL_COMPAT_HEADERS_DIR SKELETON_DIR SKELETON_INIT_COMMON_DIR SKELETON_INIT_SYSV_DIR' | cut -d= -f2); do
    mkdir -p "$dir"
    for s in downloaded extracted patched configured built host_installed staging_installed \
      target_installed installed; do touch "$dir/.stamp_$s"; done
  done
  mkdir -p "$out/host/bin"
  ln -sf "$(rustup which cargo)" "$out/host/bin/cargo"
  ln -sf "$(rustup which rustc)" "$out/host/bin/rustc"
  ln -sf "$(command -v tar)" "$out/host/bin/tar"
  local cross t
  cross=$(var TARGET_CROSS)
  for t in /usr/bin/aarch64-linux-gnu-*; do ln -sf "$t" "$cross${t##*/aarch64-linux-gnu-}"; done
}

# built NAME FEATURES: the package built by Buildroot offline, compared with `make cross`.
built() {
  local name=$1 features=$2 bin ref size refsize
  brmake -s tunnel-agent-dirclean >/dev/null
  # No network at all: a namespace with only a loopback that is down.
  unshare -n make -C "$br" O="$out" BR2_EXTERNAL="$repo/buildroot" tunnel-agent >"$work/br-$name.log" 2>&1 \
    || { tail -40 "$work/br-$name.log"; fail "Buildroot's offline build ($name) failed: $work/br-$name.log"; }
  bin=$out/target/usr/bin/tunnel-agent
  file "$bin" | grep -q 'ARM aarch64.*statically linked' || fail "$name: $(file "$bin")"
  [ "$(stat -c %a "$out/target/etc/init.d/S95tunnel-agent")" = 755 ] || fail "the init script is not installed 0755"
  make -s -C "$repo" cross TARGET=$br_target FEATURES="$features" >/dev/null
  ref=$repo/target/cross${features:+-notls}/$br_target/release/tunnel-agent
  size=$(stat -c %s "$bin") refsize=$(stat -c %s "$ref")
  echo "$name: Buildroot $size bytes, make cross $refsize bytes"
  if [ $((size * 100)) -gt $((refsize * 105)) ] || [ $((size * 100)) -lt $((refsize * 95)) ]; then
    fail "$name: Buildroot's binary ($size bytes) is not within 5 % of make cross ($refsize bytes)"
  fi
  # TLS or not, told apart by what the binary does with a configuration that asks for TLS.
  local verdict
  verdict=$(MEETING_TOKEN=t MEETING_DEVICE_KEY=3316A52EB08837267BF6BD3E2B2E8DC7 qemu-aarch64 "$bin" check --json --tls \
    --host 127.0.0.1 --port 9 2>/dev/null | grep -o '"verdict":"[a-z_]*"' || true)
  echo "$name: check --tls says $verdict"
  case "$name:$verdict" in
    tls:*config_error*) fail "the TLS build says it has no TLS" ;;
    notls:*config_error*) ;;
    notls:*) fail "the build without TLS did not refuse --tls" ;;
    tls:'') fail "the TLS build gave no verdict" ;;
  esac
}

step "Buildroot: make tunnel-agent-source (the only step with network: git archive, cargo vendor)"
command -v qemu-aarch64 >/dev/null || {
  as_root apt-get update -qq || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; }
make -s -C "$repo" cross-setup TARGET=$br_target
stand_in
brmake tunnel-agent-source >"$work/br-source.log" 2>&1 \
  || { tail -40 "$work/br-source.log"; fail "make tunnel-agent-source failed"; }
tarball=$BR2_DL_DIR/tunnel-agent/$(var TUNNEL_AGENT_SOURCE)
listing=$(tar tzf "$tarball")
grep -q '^[^/]*/VENDOR/rustls/Cargo.toml$' <<<"$listing" || fail "no vendored crates in $tarball"
grep -q '^[^/]*/.cargo/config.toml$' <<<"$listing" || fail "no cargo vendor configuration in $tarball"
! grep -q '^[^/]*/target/' <<<"$listing" || fail "the developer's target/ is in $tarball"
ok "download step: $(basename "$tarball"), $(stat -c %s "$tarball") bytes, crates vendored, no target/"

step "Buildroot: make tunnel-agent offline, TLS on"
built tls ""
ok "TLS on: built offline, within 5 % of make cross, TLS works"

step "Buildroot: TLS off"
sed -i 's/^BR2_PACKAGE_TUNNEL_AGENT_TLS=y/# BR2_PACKAGE_TUNNEL_AGENT_TLS is not set/' "$out/.config"
brmake -s olddefconfig >/dev/null
config_has '# BR2_PACKAGE_TUNNEL_AGENT_TLS is not set'
config_has BR2_PACKAGE_TUNNEL_AGENT=y
[ "$(var TUNNEL_AGENT_CARGO_BUILD_OPTS)" = "--bin tunnel-agent --no-default-features" ] \
  || fail "TLS off: cargo options are '$(var TUNNEL_AGENT_CARGO_BUILD_OPTS)'"
built notls --no-default-features
ok "TLS off: olddefconfig keeps it off, built offline, within 5 % of make cross, refuses TLS"

step "Buildroot: a working tree through TUNNEL_AGENT_OVERRIDE_SRCDIR"
# `make cross` above has filled target/.
[ -d "$repo/target" ] || fail "$repo/target does not exist: nothing to show it stays out"
brmake -s TUNNEL_AGENT_OVERRIDE_SRCDIR="$repo" tunnel-agent-rsync >/dev/null
synced=$(brmake -s --no-print-directory TUNNEL_AGENT_OVERRIDE_SRCDIR="$repo" printvars VARS=TUNNEL_AGENT_DIR | cut -d= -f2)
[ -f "$synced/Cargo.toml" ] || fail "the override did not copy the working tree to $synced"
[ ! -e "$synced/target" ] || fail "the developer's target/ was copied to $synced"
ok "override: the working tree is copied without target/ ($(du -sh "$synced" | cut -f1))"
rm -rf "$synced"

# ---- BitBake -----------------------------------------------------------------------------
step "BitBake: user, layer copy, DL_DIR"
if [ "$(id -u)" = 0 ]; then
  id "$bb_user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$bb_user"
  as_bb() { runuser -u "$bb_user" -- env -i HOME="$(getent passwd "$bb_user" | cut -d: -f6)" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=en_US.UTF-8 bash -c "$1"; }
else
  as_bb() { env LANG=en_US.UTF-8 bash -c "$1"; }
fi
# The layer builds the repository it lives in: a copy of the working tree without target/.
mkdir -p "$work/src"
git -C "$repo" ls-files -co --exclude-standard -z | tar -C "$repo" --null --no-recursion -T - -cf - \
  | tar xf - -C "$work/src"
# BitBake's crate fetcher asks crates.io's web API, which cannot be reached here; cargo's hosts
# can. `cargo fetch` brings the same .crate files, and BitBake checks each against the sha256
# in the recipe before it uses it.
cargo fetch --locked --manifest-path "$work/src/Cargo.toml" -q
cache=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -maxdepth 1 -name 'index.crates.io-*' | head -1)
mkdir -p "$work/dl"
inc=$work/src/yocto/meta-tunnel-agent/recipes-connectivity/tunnel-agent/tunnel-agent-crates.inc
n=0
while read -r name version; do
  cp "$cache/$name-$version.crate" "$work/dl/" || fail "$name $version is not in cargo's cache"
  n=$((n + 1))
done < <(sed -n 's|.*crate://crates.io/\([^/]*\)/\([^ ]*\) .*|\1 \2|p' "$inc")
[ "$n" -gt 50 ] || fail "only $n crates in $inc"
echo "DL_DIR seeded with $n crates"
if [ "$(id -u)" = 0 ]; then chown -R "$bb_user": "$work"; fi

# bitbake_run RELEASE: parse everything, then the recipe's tasks as far as this machine allows.
bitbake_run() {
  local rel=$1 oe=$work/oe-$1 build=$work/build-$1 log
  step "BitBake $rel: bitbake -p"
  as_bb "set -e; cd '$oe' && . ./oe-init-build-env '$build' >/dev/null
    cat >>conf/local.conf <<'EOF'
DL_DIR = \"$work/dl\"
INHERIT:remove = \"uninative\"
CONNECTIVITY_CHECK_URIS = \"\"
BB_NUMBER_THREADS = \"2\"
EOF
    bitbake-layers add-layer '$work/src/yocto/meta-tunnel-agent'" >"$work/bb-$rel-setup.log" 2>&1 \
    || { cat "$work/bb-$rel-setup.log"; fail "$rel: the layer could not be added"; }
  log=$work/bb-$rel-parse.log
  as_bb "cd '$oe' && . ./oe-init-build-env '$build' >/dev/null && bitbake -p" >"$log" 2>&1 \
    || { tail -30 "$log"; fail "$rel: bitbake -p failed"; }
  grep -E 'Parsing of|version' "$log" | tail -2
  ! grep -E '^(WARNING|ERROR)' "$log" || fail "$rel: bitbake -p gave warnings or errors"
  grep -q ' 0 errors\.' "$log" || fail "$rel: no '0 errors' in the parse summary"
  ok "$rel: bitbake -p, 0 errors, 0 warnings"

  step "BitBake $rel: the recipe's PACKAGECONFIG, CARGO_BUILD_FLAGS and S (tinfoil)"
  as_bb "cd '$oe' && . ./oe-init-build-env '$build' >/dev/null && python3 '$work/src/tests/packaging-recipe.py'" \
    || fail "$rel: the recipe check failed"
  ok "$rel: tls PACKAGECONFIG defined, --no-default-features exactly when it is off"

  step "BitBake $rel: bitbake tunnel-agent -c $bitbake_task"
  log=$work/bb-$rel-$bitbake_task.log
  as_bb "cd '$oe' && . ./oe-init-build-env '$build' >/dev/null && bitbake tunnel-agent -c $bitbake_task" \
    >"$log" 2>&1 || { grep -E '^(ERROR|WARNING)' "$log" | head -20; fail "$rel: bitbake tunnel-agent -c $bitbake_task failed"; }
  ! grep -E '^(WARNING|ERROR)' "$log" || fail "$rel: -c $bitbake_task gave warnings or errors"
  local s
  s=$(find "$build"/tmp*/work/*/tunnel-agent -mindepth 1 -maxdepth 1 -type d | head -1)
  if [ "$bitbake_task" = unpack ]; then
    local src
    src=$(find "$s" -maxdepth 3 -name Cargo.toml -path '*/tunnel-agent/Cargo.toml' | head -1)
    [ -n "$src" ] || fail "$rel: the project is not unpacked under $s"
    [ "$(find "$s" -maxdepth 6 -name .cargo-checksum.json | wc -l)" -ge "$n" ] \
      || fail "$rel: fewer than $n crates unpacked"
    echo "unpacked: ${src%/Cargo.toml} and $n crates"
  fi
  ok "$rel: bitbake tunnel-agent -c $bitbake_task"
}
for r in "${releases[@]}"; do bitbake_run "$r"; done

echo
echo "packaging: $passed passed, 0 failed"
