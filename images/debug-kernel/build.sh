#!/usr/bin/env bash
# Builds the debug guest kernel: Debian's 6.12 kernel source (the
# linux-source-6.12 package's tarball) with a small configuration,
# allnoconfig plus config.fragment (64-bit SMP, ACPI, PCI, virtio-pci, 8250
# console, initramfs, modules) and the checkers: KASAN (generic, inline),
# KFENCE, lockdep (PROVE_LOCKING), DEBUG_ATOMIC_SLEEP, DEBUG_OBJECTS_WORK,
# DMA_API_DEBUG. guest-driver/tests/run.sh --debug-kernel boots it.
# Fails if any option the fragment asks for is not in the final .config.
#
# Output, cached in $KT_CACHE/debug-kernel-<hash>/ (keyed by the tarball's
# sha256, the fragment, this script and the compiler's version):
#   bzImage   the kernel
#   linux/    the built tree (modules_prepare done, Module.symvers): build
#             out-of-tree modules with make -C .../linux M=<dir>
#   build.log the build's output
# A cache hit is instant; a lock keeps two builds of one key apart. Progress
# goes to stderr; the last stdout line is
#   KERNEL=<bzImage> KDIR=<build tree>
# Environment: KT_CACHE, KT_DEBUG_KERNEL_KEEP (cached builds kept, default 2),
# KT_JOBS (make -j, default nproc). Runs the build at nice 19.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
TARBALL=${KT_LINUX_SOURCE:-/usr/src/linux-source-6.12.tar.xz}
FRAGMENT=$HERE/config.fragment
JOBS=${KT_JOBS:-$(nproc)}

log() { printf 'debug-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -r "$TARBALL" ] || die "$TARBALL missing (package linux-source-6.12; run scripts/setup.sh)"
for tool in gcc make flex bison bc perl xz; do
	command -v "$tool" >/dev/null || die "$tool missing (run scripts/setup.sh)"
done
[ -f /usr/include/libelf.h ] || die "libelf-dev missing (objtool needs it; run scripts/setup.sh)"

HASH=$( {
	echo "source"
	sha256sum <"$TARBALL"
	echo "fragment"
	sha256sum <"$FRAGMENT"
	echo "script"
	sha256sum <"$HERE/build.sh"
	echo "compiler"
	gcc --version | head -n1
} | sha256sum | cut -c1-16)
OUT=$KT_CACHE/debug-kernel-$HASH

report() {
	echo "KERNEL=$OUT/bzImage KDIR=$OUT/linux"
}

if [ -f "$OUT/.complete" ]; then
	log "cache hit: $OUT"
	report
	exit 0
fi

mkdir -p "$KT_CACHE"
exec 9>"$OUT.lock"
if ! flock -n 9; then
	log "another build of $OUT is running; waiting for it"
	flock 9
fi
if [ -f "$OUT/.complete" ]; then
	log "built meanwhile: $OUT"
	report
	exit 0
fi

# The tree is built where it stays (out-of-tree module builds use it), so a
# build that died half-way is wiped and redone; .complete marks a good one.
t0=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT"
log "unpacking $(basename "$TARBALL") into $OUT"
tar -xJf "$TARBALL" -C "$OUT"
src=$(find "$OUT" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' -print -quit)
[ -n "$src" ] || die "no linux-source-* directory in $TARBALL"
mv "$src" "$OUT/linux"
cd "$OUT/linux"

log "configuring: allnoconfig + $(basename "$FRAGMENT")"
ARCH=x86_64 scripts/kconfig/merge_config.sh -n "$FRAGMENT" >"$OUT/config.log" 2>&1 ||
	{ cat "$OUT/config.log" >&2; die "merge_config.sh failed"; }

# Every option the fragment sets must be in .config as asked (a dependency
# that is not met makes Kconfig drop it silently).
missing=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*)
		if ! grep -qxF -- "$line" .config; then
			log "requested '$line', .config has '$(grep -E "^(# )?${line%%=*}[= ]" .config || echo nothing)'"
			missing=1
		fi
		;;
	"# CONFIG_"*" is not set")
		opt=${line#\# }
		opt=${opt%% *}
		if grep -q "^$opt=" .config; then
			log "requested '$line', .config has '$(grep "^$opt=" .config)'"
			missing=1
		fi
		;;
	esac
done <"$FRAGMENT"
[ "$missing" = 0 ] || die "options of $(basename "$FRAGMENT") missing from .config"

log "building bzImage and modules_prepare with -j$JOBS at nice 19 (log: $OUT/build.log)"
if ! nice -n 19 make ARCH=x86_64 -j"$JOBS" bzImage modules modules_prepare >"$OUT/build.log" 2>&1; then
	tail -n 40 "$OUT/build.log" >&2
	die "kernel build failed (log: $OUT/build.log)"
fi
[ -f Module.symvers ] || die "no Module.symvers after the build"
[ -f arch/x86/boot/bzImage ] || die "no bzImage after the build"
cp arch/x86/boot/bzImage "$OUT/bzImage"
# vmlinux.o and the archives are only needed to link vmlinux again.
rm -f vmlinux.o
find . -name built-in.a -delete
echo "$(make -s kernelrelease) built in $(($(date +%s) - t0)) s" >"$OUT/contents.txt"
touch "$OUT/.complete"
log "built $OUT: $(cat "$OUT/contents.txt")"

# Keep the newest $KT_DEBUG_KERNEL_KEEP builds (default 2); older ones whose
# lock nobody holds go.
keep=${KT_DEBUG_KERNEL_KEEP:-2}
ls -1dt "$KT_CACHE"/debug-kernel-????????????????/ 2>/dev/null | tail -n +"$((keep + 1))" | while read -r old; do
	old=${old%/}
	(
		flock -n 8 || exit 0
		rm -rf "$old"
		rm -f "$old.lock"
	) 8>"$old.lock"
done
report
