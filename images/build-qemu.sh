#!/usr/bin/env bash
# Builds the patched QEMU that hosts kerntransport (virtio ID 60) through
# vhost-user-device-pci, and caches it in $KT_CACHE/qemu-<hash>/. The hash
# covers the upstream tarball (name and checksum from the archive's source
# index), the patches and this script. Owns only that build: the source comes
# from Debian's archive (`apt-get source`, bookworm-backports deb-src line
# added by scripts/setup.sh), meson from PyPI in a venv in the cache.
# Progress goes to stderr; the last stdout line is the qemu-system-x86_64 path.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
PATCH="$HERE/qemu/vhost-user-device-custom-id.patch"
DS_FIXUP="$HERE/qemu/ds-tarball-no-edk2.patch"
MESON_VERSION=1.5.0
PYCOTAP_VERSION=1.3.1
JOBS=${KT_JOBS:-2}

log() { printf 'build-qemu: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The newest qemu source package apt knows about, as "<version> <sha256> <tarball>".
orig_tarball() {
	apt-cache showsrc qemu 2>/dev/null | awk '
		/^Package: / { pkg = $2 }
		/^Version: / { ver = $2 }
		/^Checksums-Sha256:/ { insum = 1; next }
		/^[^ ]/ { insum = 0 }
		insum && pkg == "qemu" && $3 ~ /^qemu_.*\.orig\.tar\.xz$/ { print ver, $1, $3 }
	' | sort -V | tail -n1
}

read -r SRC_VERSION TAR_SHA TARBALL < <(orig_tarball) ||
	die "apt has no qemu source package; run scripts/setup.sh (it adds the bookworm-backports deb-src line) and apt-get update"
case "$TARBALL" in
qemu_10.*) ;;
*) die "expected a QEMU 10 source package, apt offers $TARBALL ($SRC_VERSION)" ;;
esac

HASH=$( {
	echo "$TARBALL $TAR_SHA meson=$MESON_VERSION pycotap=$PYCOTAP_VERSION"
	cat "$PATCH" "$DS_FIXUP" "$0"
} | sha256sum | cut -c1-16)
PREFIX="$KT_CACHE/qemu-$HASH"
BIN="$PREFIX/bin/qemu-system-x86_64"

if [ -f "$PREFIX/.complete" ] && [ -x "$BIN" ]; then
	log "cache hit: $PREFIX"
	echo "$BIN"
	exit 0
fi

mkdir -p "$KT_CACHE"
exec 9>"$KT_CACHE/qemu-$HASH.lock"
flock 9
if [ -f "$PREFIX/.complete" ] && [ -x "$BIN" ]; then
	log "built meanwhile by another run: $PREFIX"
	echo "$BIN"
	exit 0
fi

log "building QEMU from $TARBALL ($SRC_VERSION) into $PREFIX"
start=$(date +%s)

# 1. Source tarball. apt-get also tries the .dsc and .debian.tar.xz, which the
#    archive may refuse (404) and then exits non-zero: judge by the tarball.
DL="$KT_CACHE/downloads"
mkdir -p "$DL"
if [ ! -f "$DL/$TARBALL" ] || ! echo "$TAR_SHA  $DL/$TARBALL" | sha256sum -c --quiet - >/dev/null 2>&1; then
	rm -f "$DL/$TARBALL"
	(cd "$DL" && apt-get source --download-only qemu >&2 2>&1) ||
		log "apt-get source exited non-zero (the .dsc/.debian.tar.xz may be missing); checking for the tarball"
	[ -f "$DL/$TARBALL" ] || die "apt-get source did not fetch $TARBALL"
	rm -f "$DL"/qemu_*.dsc "$DL"/qemu_*.debian.tar.xz
fi
echo "$TAR_SHA  $DL/$TARBALL" | sha256sum -c --quiet - >&2 || die "$TARBALL: checksum mismatch"

# 2. QEMU's configure-time Python packages (meson, pycotap; the +ds tarball
#    drops the vendored wheels) from PyPI, in a venv in the cache. configure's
#    own pyvenv inherits them through --python.
VENV="$KT_CACHE/py-qemu-meson-$MESON_VERSION-pycotap-$PYCOTAP_VERSION"
if [ ! -f "$VENV/.complete" ]; then
	log "creating $VENV (meson, pycotap from PyPI)"
	rm -rf "$VENV"
	/usr/bin/python3 -m venv "$VENV" >&2
	"$VENV/bin/pip" install -q "meson==$MESON_VERSION" "pycotap==$PYCOTAP_VERSION" >&2
	touch "$VENV/.complete"
fi

# 3. Unpack and patch in a scratch build directory (removed at exit unless
#    KT_KEEP_BUILD=1, e.g. to debug a failed build).
WORK="$KT_CACHE/qemu-build-$HASH"
rm -rf "$WORK"
mkdir -p "$WORK"
[ "${KT_KEEP_BUILD:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
tar -xf "$DL/$TARBALL" -C "$WORK"
SRC=$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'qemu-*' | head -n1)
[ -n "$SRC" ] || die "$TARBALL did not unpack to a qemu-* directory"
patch -d "$SRC" -p1 --no-backup-if-mismatch <"$PATCH" >&2
# Debian's +ds tarball drops the firmware blobs; keep meson from unpacking them.
patch -d "$SRC" -p1 --no-backup-if-mismatch <"$DS_FIXUP" >&2

# 4. Configure, build, install.
mkdir -p "$SRC/build"
cd "$SRC/build"
../configure \
	--prefix="$PREFIX" \
	--python="$VENV/bin/python3" \
	--target-list=x86_64-softmmu \
	--without-default-features \
	--enable-vhost-user \
	--enable-tcg \
	--enable-kvm \
	--disable-docs \
	--disable-install-blobs >&2
nice make -j"$JOBS" >&2
rm -rf "$PREFIX"
make install >&2
"$BIN" --version >&2
# The patched device must be user-creatable; stock QEMU would refuse this.
if "$BIN" -M none -display none -device vhost-user-device-pci 2>&1 | grep -q pluggable; then
	die "built QEMU still refuses -device vhost-user-device-pci (patch not effective)"
fi
touch "$PREFIX/.complete"
cd /
log "built in $(($(date +%s) - start)) s"
echo "$BIN"
