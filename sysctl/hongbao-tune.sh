#!/usr/bin/env bash
# hongbao-tune.sh: check or apply the host tuning for a million TCP
# connections. The wanted values live in the two files beside this script,
# 99-hongbao.conf (sysctl.d) and 99-hongbao-limits.conf (limits.d); this
# script only reads them. See sysctl/README.md.
#
# Exit codes (also in --help):
#   0  --check: everything as wanted.  --apply: applied, or nothing to do.
#   1  error: a config file is invalid, a required key is missing, or a write
#      failed (what was changed is rolled back).
#   2  usage error.
#   3  --check or --apply --dry-run: some settings would change.
#   4  --apply refused: not root, or /proc/sys or /etc is read-only here (a
#      container). Nothing was changed.
set -euo pipefail
export LC_ALL=C

readonly EXIT_OK=0 EXIT_ERROR=1 EXIT_USAGE=2 EXIT_CHANGES=3 EXIT_REFUSED=4

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SYSCTL_SRC=$here/99-hongbao.conf
readonly LIMITS_SRC=$here/99-hongbao-limits.conf
readonly PROC_SYS=/proc/sys
readonly SYSCTL_DST=/etc/sysctl.d/99-hongbao.conf
readonly LIMITS_DST=/etc/security/limits.d/99-hongbao-limits.conf
readonly ME=${0##*/}

usage() {
	cat <<EOF
Usage: $ME --check | --apply [--dry-run] | --help

Tunes a Linux host to hold a million TCP connections (hongbao server or
flooders). Wanted values and the reason for each: $SYSCTL_SRC
and $LIMITS_SRC.

  --check           for each setting print current value, wanted value,
                    OK/CHANGE and why; change nothing. Needs no root.
  --apply           as root: raise the kernel settings now (never lowers one
                    a host already has beyond the wanted value), install
                    $SYSCTL_DST (every boot) and
                    $LIMITS_DST (every login); print each
                    change as old -> new. Running it again changes nothing.
  --apply --dry-run show what --apply would change; change nothing.
  --dry-run         the same as --apply --dry-run.
  --help            this text.

Exit codes:
  0  --check: everything as wanted; --apply: applied, or nothing to do
  1  error: invalid config, a required key missing, a write failed (rolled back)
  2  usage error
  3  --check / --dry-run: some settings would change
  4  --apply refused: not root, or /proc/sys or /etc read-only (a container);
     nothing changed

The nofile line of --check reads this shell's own limit: what a server
started from here gets. limits.d applies at the next login; a systemd
service needs LimitNOFILE= in its unit instead.
EOF
}

die() { # die CODE MESSAGE...
	local code=$1
	shift
	printf '%s: %s\n' "$ME" "$*" >&2
	exit "$code"
}

# --- reading the config ----------------------------------------------------

keys=()               # in file order, without the optional "-" prefix
declare -A want=()    # key -> wanted value, whitespace normalised
declare -A mode=()    # key -> at-least | at-most | exact
declare -A why=()     # key -> one-line reason
declare -A optional=() # key -> 1 when the file marks it "-key"

trim() { # trim STRING: prints it without leading/trailing whitespace
	local s=$1
	s=${s#"${s%%[![:space:]]*}"}
	s=${s%"${s##*[![:space:]]}"}
	printf '%s' "$s"
}

squeeze() { # squeeze STRING: fields joined by single spaces (proc uses tabs)
	local -a f
	read -r -a f <<<"$1" || true
	printf '%s' "${f[*]}"
}

parse_sysctl_conf() {
	local file=$SYSCTL_SRC line n=0 w="" m="" key value opt
	[[ -r $file ]] || die "$EXIT_ERROR" "cannot read $file"
	while IFS= read -r line || [[ -n $line ]]; do
		n=$((n + 1))
		line=$(trim "$line")
		case $line in
		'') ;;
		'# why:'*) w=$(trim "${line#'# why:'}") ;;
		'# check:'*) m=$(trim "${line#'# check:'}") ;;
		'#'* | ';'*) ;;
		*=*)
			key=$(trim "${line%%=*}")
			value=$(squeeze "${line#*=}")
			opt=0
			if [[ $key == -* ]]; then
				opt=1
				key=${key#-}
			fi
			[[ $key =~ ^[a-z0-9_]+(\.[a-z0-9_-]+)+$ ]] ||
				die "$EXIT_ERROR" "$file:$n: not a sysctl key: '$key'"
			[[ -n $value ]] || die "$EXIT_ERROR" "$file:$n: $key has no value"
			[[ -n $w ]] || die "$EXIT_ERROR" "$file:$n: $key has no '# why:' line above it"
			case $m in
			at-least | at-most | exact) ;;
			*) die "$EXIT_ERROR" "$file:$n: $key needs '# check: at-least|at-most|exact' above it, not '$m'" ;;
			esac
			[[ -z ${want[$key]+set} ]] || die "$EXIT_ERROR" "$file:$n: $key appears twice"
			if [[ $m != exact ]] && ! all_uints "$value"; then
				die "$EXIT_ERROR" "$file:$n: $key is '$m' but '$value' is not whole numbers"
			fi
			keys+=("$key")
			want[$key]=$value
			mode[$key]=$m
			why[$key]=$w
			optional[$key]=$opt
			w="" m=""
			;;
		*) die "$EXIT_ERROR" "$file:$n: not 'key = value': $line" ;;
		esac
	done <"$file"
	((${#keys[@]} > 0)) || die "$EXIT_ERROR" "$file: no settings"
}

nofile_want="" # the hard nofile limit wanted for the user running this

parse_limits_conf() {
	local file=$LIMITS_SRC line n=0 w="" domain type item value rest
	local star="" root=""
	[[ -r $file ]] || die "$EXIT_ERROR" "cannot read $file"
	while IFS= read -r line || [[ -n $line ]]; do
		n=$((n + 1))
		line=$(trim "$line")
		case $line in
		'') ;;
		'# why:'*) w=$(trim "${line#'# why:'}") ;;
		'#'*) ;;
		*)
			read -r domain type item value rest <<<"$line"
			[[ -n $value && -z $rest ]] ||
				die "$EXIT_ERROR" "$file:$n: not '<domain> <type> <item> <value>': $line"
			[[ -n $w ]] || die "$EXIT_ERROR" "$file:$n: no '# why:' line above it"
			if [[ $type == hard && $item == nofile ]]; then
				is_uint "$value" || die "$EXIT_ERROR" "$file:$n: nofile '$value' is not a number"
				case $domain in
				'*') star=$value ;;
				root) root=$value ;;
				esac
			fi
			w=""
			;;
		esac
	done <"$file"
	[[ -n $star ]] || die "$EXIT_ERROR" "$file: no '* hard nofile' line"
	if ((EUID == 0)) && [[ -n $root ]]; then
		nofile_want=$root
	else
		nofile_want=$star
	fi
	# pam_limits refuses a login whose nofile exceeds fs.nr_open: never
	# install such a pair.
	local nr=${want[fs.nr_open]:-1048576} v
	for v in "$star" "$root"; do
		[[ -z $v ]] || uint_ge "$nr" "$v" ||
			die "$EXIT_ERROR" "$file: hard nofile $v is above fs.nr_open $nr in $SYSCTL_SRC: pam_limits would refuse every login"
	done
}

# --- numbers, compared as strings so no size overflows --------------------

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

all_uints() {
	local f fields
	read -r -a fields <<<"$1" || true
	for f in "${fields[@]}"; do is_uint "$f" || return 1; done
}

uint_ge() { # uint_ge A B: A >= B
	local a=${1#"${1%%[!0]*}"} b=${2#"${2%%[!0]*}"}
	if ((${#a} != ${#b})); then
		((${#a} > ${#b}))
		return
	fi
	[[ $a > $b || $a == "$b" ]]
}

# fields KEY CURRENT: prints the value --apply would leave: exact: the wanted
# one; at-least/at-most: field by field the larger/smaller of current and
# wanted, so a host that already has more (less) keeps it.
effective() {
	local key=$1 cur=$2 w=${want[$1]}
	local -a c ws out=()
	[[ ${mode[$key]} == exact ]] && { printf '%s' "$w"; return; }
	read -r -a c <<<"$cur" || true
	read -r -a ws <<<"$w" || true
	if ((${#c[@]} != ${#ws[@]})) || ! all_uints "$cur"; then
		printf '%s' "$w"
		return
	fi
	local i
	for i in "${!ws[@]}"; do
		if [[ ${mode[$key]} == at-least ]]; then
			if uint_ge "${c[i]}" "${ws[i]}"; then out+=("${c[i]}"); else out+=("${ws[i]}"); fi
		else
			if uint_ge "${ws[i]}" "${c[i]}"; then out+=("${c[i]}"); else out+=("${ws[i]}"); fi
		fi
	done
	printf '%s' "${out[*]}"
}

wanted_text() { # the wanted column: "= v", ">= v", "<= v"
	case ${mode[$1]} in
	at-least) printf '>= %s' "${want[$1]}" ;;
	at-most) printf '<= %s' "${want[$1]}" ;;
	*) printf '%s' "${want[$1]}" ;;
	esac
}

# --- the host ------------------------------------------------------------

proc_path() { printf '%s/%s' "$PROC_SYS" "${1//.//}"; }

declare -A cur=()   # key -> current value ("" when absent)
declare -A state=() # key -> OK | CHANGE | SKIP | ABSENT | UNREADABLE

read_host() {
	local key p v
	for key in "${keys[@]}"; do
		p=$(proc_path "$key")
		if [[ ! -e $p ]]; then
			cur[$key]=""
			if ((optional[$key])); then state[$key]=SKIP; else state[$key]=ABSENT; fi
			continue
		fi
		if ! v=$(cat "$p" 2>/dev/null); then
			cur[$key]=""
			state[$key]=UNREADABLE
			continue
		fi
		v=$(squeeze "$v")
		cur[$key]=$v
		if [[ $(effective "$key" "$v") == "$v" ]]; then
			state[$key]=OK
		else
			state[$key]=CHANGE
		fi
	done
}

# The sysctl.d file as --apply installs it: the source, with every at-least /
# at-most key whose live value already goes beyond the wanted one recorded at
# that live value, so a reboot never lowers what the host had.
render_sysctl() {
	local line key prefix eff
	while IFS= read -r line || [[ -n $line ]]; do
		case $(trim "$line") in
		'#'* | ';'* | '') printf '%s\n' "$line" ;;
		*=*)
			key=$(trim "${line%%=*}")
			prefix=""
			[[ $key == -* ]] && prefix=- key=${key#-}
			if [[ -n ${cur[$key]} ]]; then
				eff=$(effective "$key" "${cur[$key]}")
			else
				eff=${want[$key]}
			fi
			if [[ $eff == "${want[$key]}" ]]; then
				printf '%s\n' "$line"
			else
				printf "# kept: this host's own value, %s, already satisfies %s\n" "$eff" "$(wanted_text "$key")"
				printf '%s%s = %s\n' "$prefix" "$key" "$eff"
			fi
			;;
		*) printf '%s\n' "$line" ;;
		esac
	done <"$SYSCTL_SRC"
}

render_limits() { cat "$LIMITS_SRC"; }

file_state() { # file_state DST RENDER_FN: prints missing|differs|installed
	local dst=$1 fn=$2
	if [[ ! -e $dst ]]; then
		printf missing
	elif [[ ! -r $dst ]]; then
		printf unreadable
	elif [[ "$($fn)" == "$(cat "$dst")" ]]; then
		printf installed
	else
		printf differs
	fi
}

session_nofile() { ulimit -H -n; }

nofile_ok() {
	local hard
	hard=$(session_nofile)
	[[ $hard == unlimited ]] || uint_ge "$hard" "$nofile_want"
}

# --- --check ---------------------------------------------------------------

row() { printf '%-34s %-22s %-25s %-6s %s\n' "$@"; }

check() {
	local key st n_change=0 n_error=0 fs
	row SETTING CURRENT WANTED STATE WHY
	for key in "${keys[@]}"; do
		st=${state[$key]}
		case $st in
		OK) row "$key" "${cur[$key]}" "$(wanted_text "$key")" OK "${why[$key]}" ;;
		CHANGE)
			n_change=$((n_change + 1))
			row "$key" "${cur[$key]}" "$(wanted_text "$key")" CHANGE "${why[$key]}"
			;;
		SKIP) row "$key" "(absent)" "$(wanted_text "$key")" SKIP "optional, absent on this host (module not loaded): ${why[$key]}" ;;
		*)
			n_error=$((n_error + 1))
			row "$key" "(${st,,})" "$(wanted_text "$key")" ERROR "$(proc_path "$key") is ${st,,} on this kernel: ${why[$key]}"
			;;
		esac
	done
	fs=$(file_state "$SYSCTL_DST" render_sysctl)
	if [[ $fs == installed ]]; then st=OK; else st=CHANGE n_change=$((n_change + 1)); fi
	row "sysctl.d/99-hongbao.conf" "$fs" "installed" "$st" "$SYSCTL_DST sets the above at every boot"
	fs=$(file_state "$LIMITS_DST" render_limits)
	if [[ $fs == installed ]]; then st=OK; else st=CHANGE n_change=$((n_change + 1)); fi
	row "limits.d/99-hongbao-limits.conf" "$fs" "installed" "$st" "$LIMITS_DST sets the hard nofile limit at every login"
	if nofile_ok; then st=OK; else st=CHANGE n_change=$((n_change + 1)); fi
	row "nofile (this shell, hard)" "$(session_nofile) (soft $(ulimit -S -n))" ">= $nofile_want" "$st" \
		"what a server started from this shell may open (it raises its soft limit to this); limits.d sets it at the next login, a systemd service needs LimitNOFILE=$nofile_want"
	memory_note
	if ((n_error > 0)); then
		printf '%d error(s): required settings missing or unreadable on this kernel.\n' "$n_error"
		exit "$EXIT_ERROR"
	fi
	if ((n_change > 0)); then
		printf '%d to change. Apply with: sudo %s --apply\n' "$n_change" "$here/$ME"
		exit "$EXIT_CHANGES"
	fi
	printf 'All settings as wanted.\n'
	exit "$EXIT_OK"
}

memory_note() {
	local mem_kb page high
	mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo 2>/dev/null || true)
	page=$(getconf PAGESIZE 2>/dev/null || echo 4096)
	high=${want[net.ipv4.tcp_mem]:-}
	high=${high##* }
	[[ -n $mem_kb && -n $high ]] || return 0
	printf 'note: this host has %d MiB of RAM; a million connections take ~4.3 GB of kernel slab plus up to %d MiB of TCP buffers (tcp_mem high, pages of %d B).\n' \
		$((mem_kb / 1024)) $((high * page / 1048576)) "$page"
}

# --- --apply -----------------------------------------------------------------

changed_keys=() # written so far, for the rollback
declare -A old=()

write_value() { # write_value KEY VALUE: writes and reads back; prints the error
	local p err got
	p=$(proc_path "$1")
	if ! err=$({ printf '%s\n' "$2" >"$p"; } 2>&1); then
		err=${err##*: } # "bash: line N: printf: write error: EINVAL" -> the last part
		printf '%s' "${err:-write failed}"
		return 1
	fi
	got=$(squeeze "$(cat "$p" 2>/dev/null || true)")
	if [[ $got != "$2" ]]; then
		printf 'the kernel kept %s' "${got:-nothing readable}"
		return 1
	fi
}

rollback() {
	local i key err
	for ((i = ${#changed_keys[@]} - 1; i >= 0; i--)); do
		key=${changed_keys[i]}
		if err=$(write_value "$key" "${old[$key]}"); then
			printf 'rolled back %s to %s\n' "$key" "${old[$key]}" >&2
		else
			printf 'could not roll back %s to %s: %s\n' "$key" "${old[$key]}" "$err" >&2
		fi
	done
}

tmp_files=()
cleanup() { ((${#tmp_files[@]} == 0)) || rm -f -- "${tmp_files[@]}"; }
trap cleanup EXIT

refuse() {
	printf '%s: refusing to apply: %s\nNothing was changed. To see what would change: %s --check\n' \
		"$ME" "$*" "$here/$ME" >&2
	exit "$EXIT_REFUSED"
}

apply() {
	local dry=$1 key plan=() sfs lfs
	for key in "${keys[@]}"; do
		case ${state[$key]} in
		CHANGE) plan+=("$key") ;;
		ABSENT | UNREADABLE) die "$EXIT_ERROR" "$(proc_path "$key") is ${state[$key],,} on this kernel; nothing was changed" ;;
		esac
	done
	sfs=$(file_state "$SYSCTL_DST" render_sysctl)
	lfs=$(file_state "$LIMITS_DST" render_limits)

	if ((${#plan[@]} == 0)) && [[ $sfs == installed && $lfs == installed ]]; then
		printf 'Nothing to change: every setting is as wanted and both files are installed.\n'
		session_note
		exit "$EXIT_OK"
	fi

	if ((dry)); then
		for key in "${plan[@]}"; do
			printf 'would change %s: %s -> %s\n' "$key" "${cur[$key]}" "$(effective "$key" "${cur[$key]}")"
		done
		[[ $sfs == installed ]] || printf 'would install %s (%s)\n' "$SYSCTL_DST" "$sfs"
		[[ $lfs == installed ]] || printf 'would install %s (%s)\n' "$LIMITS_DST" "$lfs"
		((EUID == 0)) || printf 'note: --apply needs root.\n'
		printf 'Dry run: nothing changed.\n'
		exit "$EXIT_CHANGES"
	fi

	# Everything that could refuse is checked before anything is written.
	((EUID == 0)) || refuse "it changes kernel settings and files in /etc, which needs root. Run: sudo $here/$ME --apply"
	local ro=()
	for key in "${plan[@]}"; do
		[[ -w $(proc_path "$key") ]] || ro+=("$key")
	done
	if ((${#ro[@]} > 0)); then
		refuse "these settings are read-only here: ${ro[*]}. /proc/sys is read-only (a container?), or this root is not the host's. Set them on the host; a container runtime can set the per-namespace net.* ones (e.g. docker run --sysctl net.core.somaxconn=65535)"
	fi
	local dst dir
	for dst in "$SYSCTL_DST" "$LIMITS_DST"; do
		dir=${dst%/*}
		if [[ ! -d $dir ]]; then
			[[ -d ${dir%/*} && -w ${dir%/*} ]] ||
				refuse "$dir does not exist and cannot be created: ${dir%/*} is missing (no PAM limits here?) or read-only"
		elif [[ ! -w $dir ]]; then
			refuse "$dir is not writable (read-only /etc?)"
		fi
	done

	# Files first into temporaries beside their targets, so the renames below
	# are all that can still go wrong once the kernel has been changed.
	local stmp="" ltmp=""
	mkdir -p -- "${SYSCTL_DST%/*}" "${LIMITS_DST%/*}"
	if [[ $sfs != installed ]]; then
		stmp=$(mktemp "${SYSCTL_DST%/*}/.99-hongbao.conf.XXXXXX") || die "$EXIT_ERROR" "cannot write in ${SYSCTL_DST%/*}; nothing was changed"
		tmp_files+=("$stmp")
		if ! { render_sysctl >"$stmp" && chmod 0644 "$stmp"; }; then
			die "$EXIT_ERROR" "cannot write $stmp; nothing was changed"
		fi
	fi
	if [[ $lfs != installed ]]; then
		ltmp=$(mktemp "${LIMITS_DST%/*}/.99-hongbao-limits.conf.XXXXXX") || die "$EXIT_ERROR" "cannot write in ${LIMITS_DST%/*}; nothing was changed"
		tmp_files+=("$ltmp")
		if ! { render_limits >"$ltmp" && chmod 0644 "$ltmp"; }; then
			die "$EXIT_ERROR" "cannot write $ltmp; nothing was changed"
		fi
	fi

	local new err
	for key in "${plan[@]}"; do
		new=$(effective "$key" "${cur[$key]}")
		old[$key]=${cur[$key]}
		if ! err=$(write_value "$key" "$new"); then
			printf '%s: setting %s to %s failed: %s\n' "$ME" "$key" "$new" "$err" >&2
			rollback
			die "$EXIT_ERROR" "nothing is left changed; the files were not installed"
		fi
		changed_keys+=("$key")
		printf 'changed %s: %s -> %s\n' "$key" "${old[$key]}" "$new"
	done

	local saved_sysctl="" had_sysctl=0
	if [[ -n $stmp ]]; then
		if [[ -e $SYSCTL_DST ]]; then had_sysctl=1 saved_sysctl=$(cat "$SYSCTL_DST"); fi
		if ! mv -f -- "$stmp" "$SYSCTL_DST"; then
			rollback
			die "$EXIT_ERROR" "could not install $SYSCTL_DST; settings rolled back"
		fi
		printf 'installed %s (was %s)\n' "$SYSCTL_DST" "$sfs"
	fi
	if [[ -n $ltmp ]]; then
		if ! mv -f -- "$ltmp" "$LIMITS_DST"; then
			rollback
			if [[ -n $stmp ]]; then
				if ((had_sysctl)); then printf '%s\n' "$saved_sysctl" >"$SYSCTL_DST"; else rm -f -- "$SYSCTL_DST"; fi
				printf 'restored %s\n' "$SYSCTL_DST" >&2
			fi
			die "$EXIT_ERROR" "could not install $LIMITS_DST; settings rolled back"
		fi
		printf 'installed %s (was %s)\n' "$LIMITS_DST" "$lfs"
	fi
	printf 'Applied: %d setting(s) changed.\n' "${#changed_keys[@]}"
	for key in "${keys[@]}"; do
		[[ ${state[$key]} != SKIP ]] || printf 'note: %s is absent here (module not loaded); the installed file sets it at boot if it is loaded by then.\n' "$key"
	done
	session_note
	exit "$EXIT_OK"
}

session_note() {
	nofile_ok && return 0
	printf 'note: this shell still has hard nofile %s (< %s): log in again before starting the server (limits.d applies at login), or for a systemd service set LimitNOFILE=%s in its unit.\n' \
		"$(session_nofile)" "$nofile_want" "$nofile_want"
}

# --- main --------------------------------------------------------------------

main() {
	local action="" dry=0 arg
	(($# > 0)) || {
		usage >&2
		exit "$EXIT_USAGE"
	}
	for arg in "$@"; do
		case $arg in
		--check) [[ -z $action || $action == check ]] || die "$EXIT_USAGE" "--check and --apply exclude each other (see --help)"; action=check ;;
		--apply) [[ -z $action || $action == apply ]] || die "$EXIT_USAGE" "--check and --apply exclude each other (see --help)"; action=apply ;;
		--dry-run) dry=1 ;;
		-h | --help)
			usage
			exit "$EXIT_OK"
			;;
		*) die "$EXIT_USAGE" "unknown option '$arg' (see --help)" ;;
		esac
	done
	if ((dry)); then
		[[ $action != check ]] || die "$EXIT_USAGE" "--dry-run goes with --apply, not --check"
		action=apply
	fi
	parse_sysctl_conf
	parse_limits_conf
	read_host
	case $action in
	check) check ;;
	apply) apply "$dry" ;;
	esac
}

main "$@"
