#!/usr/bin/env bash
# Guest driver checks, run by scripts/test.sh: builds kerntransport.ko and
# kt_kecho.ko from a packaged (DKMS-layout) copy of the sources against each
# supported kernel's headers with sparse (C=1) and W=1, failing on any
# compiler or sparse message; checks the module alias; then runs
# checkpatch.pl --strict and kernel-doc -Wall on every C file and header of
# the driver, and the kernel's coccicheck scripts (spatch -D report) on its
# kernel code, failing on any message. checkpatch.pl and
# scripts/coccinelle are extracted once from Debian's linux-source-6.12
# tarball into the cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KT_CACHE:-$HOME/.cache/kerntransport}

# shellcheck source=scripts/lib/kernels.sh
. "$here/../scripts/lib/kernels.sh"
mapfile -t releases < <(kt_supported_kernels)
[ "${#releases[@]}" -gt 0 ] || exit 1
if [ "${1:-}" = "--print-kernels" ]; then
	printf '%s\n' "${releases[@]}"
	exit 0
fi
KERNELS=()
for r in "${releases[@]}"; do KERNELS+=("$(kt_headers_dir "$r")"); done
SOURCE_TARBALL=/usr/src/linux-source-6.12.tar.xz

fail() {
	echo "check.sh: $*" >&2
	exit 1
}

work=$(mktemp -d /tmp/kt-driver-check.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Lines kbuild prints that are progress, not diagnostics.
is_progress() {
	grep -Ev '^make(\[[0-9]+\])?: (Entering|Leaving) directory' |
		grep -Ev '^  (CC|CC \[M\]|CHECK|LD|LD \[M\]|BTF \[M\]|MODPOST|AR) ' |
		grep -Ev '^Skipping BTF generation for .* due to unavailability of vmlinux$' ||
		true
}

build_one() {
	local kdir=$1 tree=$2 log=$2.log extra
	[ -d "$kdir" ] || fail "kernel headers $kdir missing (run scripts/setup.sh)"
	echo "check.sh: building against $(basename "$kdir") with C=1 W=1"
	if ! nice make -C "$kdir" M="$tree" C=1 W=1 modules >"$log" 2>&1; then
		cat "$log" >&2
		fail "build failed against $kdir"
	fi
	extra=$(is_progress <"$log")
	if [ -n "$extra" ]; then
		printf '%s\n' "$extra" >&2
		fail "compiler or sparse messages building against $kdir"
	fi
	for m in kerntransport kt_kecho; do
		[ -f "$tree/$m.ko" ] || fail "$m.ko not built against $kdir"
	done
	modinfo -F alias "$tree/kerntransport.ko" | grep -qx 'virtio:d0000003Cv\*' ||
		fail "kerntransport.ko lacks the virtio device 60 alias"
}

for kdir in "${KERNELS[@]}"; do
	tree=$work/$(basename "$kdir")
	make -s -C "$here" dist DESTDIR="$tree" >/dev/null
	build_one "$kdir" "$tree"
done

checkpatch_dir=$cache/checkpatch/linux-source-6.12/scripts
if [ ! -x "$checkpatch_dir/checkpatch.pl" ]; then
	[ -f "$SOURCE_TARBALL" ] || fail "$SOURCE_TARBALL missing (run scripts/setup.sh)"
	echo "check.sh: extracting checkpatch.pl into $cache/checkpatch"
	mkdir -p "$cache/checkpatch"
	tar -xJf "$SOURCE_TARBALL" -C "$cache/checkpatch" \
		linux-source-6.12/scripts/checkpatch.pl \
		linux-source-6.12/scripts/spelling.txt \
		linux-source-6.12/scripts/const_structs.checkpatch
fi

cd "$here"
mapfile -t sources < <(git ls-files --cached --others --exclude-standard \
	-- '*.c' '*.h' | grep -v '^kt/')
[ "${#sources[@]}" -gt 0 ] || fail "no sources found"
echo "check.sh: checkpatch --strict on ${#sources[@]} files"
out=$("$checkpatch_dir/checkpatch.pl" --strict --no-tree --terse --show-types \
	-f "${sources[@]}" | grep -Ev '^total: 0 errors, 0 warnings, 0 checks, ' || true)
if [ -n "$out" ]; then
	printf '%s\n' "$out" >&2
	fail "checkpatch messages"
fi
kdoc=${KERNELS[0]%-cloud-amd64}-common/scripts/kernel-doc
[ -x "$kdoc" ] || fail "$kdoc missing"
echo "check.sh: kernel-doc -Wall on ${#sources[@]} files"
out=$("$kdoc" -none -Wall "${sources[@]}" 2>&1 || true)
if [ -n "$out" ]; then
	printf '%s\n' "$out" >&2
	fail "kernel-doc messages"
fi
cocci_dir=$cache/coccinelle/linux-source-6.12/scripts/coccinelle
if [ ! -d "$cocci_dir" ]; then
	[ -f "$SOURCE_TARBALL" ] || fail "$SOURCE_TARBALL missing (run scripts/setup.sh)"
	command -v spatch >/dev/null || fail "spatch missing (coccinelle; run scripts/setup.sh)"
	echo "check.sh: extracting scripts/coccinelle into $cache/coccinelle"
	mkdir -p "$cache/coccinelle.tmp"
	tar -xJf "$SOURCE_TARBALL" -C "$cache/coccinelle.tmp" \
		linux-source-6.12/scripts/coccinelle
	rm -rf "$cache/coccinelle"
	mv "$cache/coccinelle.tmp" "$cache/coccinelle"
fi
# Kernel code only: tests/kt_guest_test.c is a user-space program.
cocci_src=$work/cocci
mkdir -p "$cocci_src"
for f in "${sources[@]}"; do
	[ "$f" = tests/kt_guest_test.c ] && continue
	mkdir -p "$cocci_src/$(dirname "$f")"
	cp "$f" "$cocci_src/$f"
done
mapfile -t scripts < <(find "$cocci_dir" -name '*.cocci' -type f | sort)
echo "check.sh: coccicheck (${#scripts[@]} scripts, report mode) on the kernel code"
found=0
for cocci in "${scripts[@]}"; do
	# As scripts/coccicheck does: the script's own options; spatch's
	# notes about the script itself ("should X be a metavariable?") are
	# not reports.
	read -ra opt <<<"$(sed -n 's|^// Options: *||p' "$cocci")"
	out=$(spatch -D report --very-quiet --no-show-diff --cocci-file "$cocci" \
		"${opt[@]}" --dir "$cocci_src" 2>&1 |
		grep -Ev '^warning: line [0-9]+: should .* be a metavariable\?$' || true)
	if [ -n "$out" ]; then
		printf '%s: %s\n' "${cocci#"$cocci_dir"/}" "$out" >&2
		found=1
	fi
done
[ "$found" = 0 ] || fail "coccicheck reports"
echo "check.sh: guest driver OK"
