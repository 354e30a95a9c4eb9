# Sourced by setup.sh (and its tests): reads apt's sources the way apt does.
# Only active entries count: one-line `deb`/`deb-src` lines in *.list files
# and deb822 stanzas (Types/URIs/Suites, `Enabled: no` honoured) in *.sources
# files; comment lines and commented-out entries are ignored. Owns parsing
# only; never edits apt's configuration and never invents an archive host.

# apt_entries FILE...: prints one "TYPE URI SUITE" line per active entry
# (several lines for a stanza naming several types, URIs or suites).
# Files ending in .sources are deb822, every other file is one-line format.
apt_entries() {
	local f
	for f in "$@"; do
		[ -f "$f" ] || continue
		case "$f" in
		*.sources) _apt_deb822 "$f" ;;
		*) _apt_oneline "$f" ;;
		esac
	done
}

_apt_oneline() {
	awk '
	{ sub(/#.*/, "") }
	NF == 0 { next }
	$1 != "deb" && $1 != "deb-src" { next }
	{
		type = $1; i = 2
		# Options: "[arch=amd64 signed-by=...]", possibly spread over fields.
		if ($i ~ /^\[/) {
			while (i <= NF && $i !~ /\]$/) i++
			i++
		}
		if (i + 1 > NF) next
		print type, $i, $(i + 1)
	}' "$1"
}

_apt_deb822() {
	awk '
	function flush(   nt, nu, ns, t, u, s, ta, ua, sa) {
		if (enabled != "no" && types != "" && uris != "" && suites != "") {
			nt = split(types, ta, " "); nu = split(uris, ua, " ")
			ns = split(suites, sa, " ")
			for (t = 1; t <= nt; t++)
				for (u = 1; u <= nu; u++)
					for (s = 1; s <= ns; s++)
						print ta[t], ua[u], sa[s]
		}
		types = uris = suites = enabled = field = ""
	}
	/^#/ { next }
	/^[ \t]*$/ { flush(); next }
	/^[ \t]/ {
		# Continuation of a multi-line field.
		line = $0; gsub(/^[ \t]+|[ \t]+$/, "", line)
		if (field == "types") types = types " " line
		else if (field == "uris") uris = uris " " line
		else if (field == "suites") suites = suites " " line
		next
	}
	{
		name = tolower($0); sub(/:.*/, "", name)
		value = $0; sub(/^[^:]*:[ \t]*/, "", value); sub(/[ \t]+$/, "", value)
		field = name
		if (name == "types") types = value
		else if (name == "uris") uris = value
		else if (name == "suites") suites = value
		else if (name == "enabled") enabled = tolower(value)
	}
	END { flush() }' "$1"
}

# apt_source_files [ROOT]: apt's source files under ROOT (default /), in the
# order apt reads them.
apt_source_files() {
	local root=${1:-} f
	[ -f "$root/etc/apt/sources.list" ] && echo "$root/etc/apt/sources.list"
	for f in "$root"/etc/apt/sources.list.d/*.list "$root"/etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] && echo "$f"
	done
	return 0
}

# apt_bookworm_uri FILE...: the URI of the first active binary entry for the
# suite "bookworm", i.e. the archive host the machine already uses. Prints
# nothing and returns 1 when there is none.
apt_bookworm_uri() {
	local uri
	uri=$(apt_entries "$@" | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
	[ -n "$uri" ] || return 1
	echo "${uri%/}"
}

# apt_has_suite SUITE FILE...: true when an active binary entry names SUITE.
apt_has_suite() {
	local suite=$1
	shift
	apt_entries "$@" | awk -v s="$suite" '$1 == "deb" && $3 == s { found = 1 } END { exit !found }'
}
