# Failure reporting shared by the set-up scripts (sourced): every failed step ends with a message
# that names the step, the cause (the log lines that matter) and the log file, never a bare exit
# code.

# cause_lines LOGFILE: the lines of a log that say why something failed, most specific first.
cause_lines() {
  local logfile=$1 pattern
  [[ -r "$logfile" ]] || return 0
  for pattern in \
      'Address already in use|BindException|could not bind|Permission denied|could not access|No space left|Read-only file system|OutOfMemoryError|Cannot allocate memory|command not found|Unable to locate package|Could not resolve|Temporary failure resolving|No such file or directory' \
      'CMake Error|FAILED: |[Ee]rror: |FATAL|PANIC|^E: |ERROR|Exception'; do
    # Stack-trace frames ("\tat java.base/...UnixException...") repeat the cause's words; skip them.
    if grep -E -v -- '^[[:space:]]+at ' "$logfile" 2>/dev/null | grep -E -q -- "$pattern"; then
      grep -E -v -- '^[[:space:]]+at ' "$logfile" | grep -E -- "$pattern" | tail -n 8
      return 0
    fi
  done
}

# report_failure PREFIX WHAT LOGFILE [DETAIL]: "PREFIX ERROR: WHAT", the cause (DETAIL, else the
# log's telling lines), the log's last lines and its path, on stderr.
report_failure() {
  local prefix=$1 what=$2 logfile=$3 detail=${4:-}
  printf '%s ERROR: %s\n' "$prefix" "$what" >&2
  local cause=$detail
  [[ -n "$cause" ]] || cause=$(cause_lines "$logfile")
  if [[ -n "$cause" ]]; then
    printf '%s   cause:\n' "$prefix" >&2
    printf '%s\n' "$cause" | sed "s/^/$prefix     /" >&2
  elif [[ -n "$logfile" && -r "$logfile" ]]; then
    printf '%s   cause: nothing in its log says why (killed from outside, or out of memory? see dmesg)\n' "$prefix" >&2
  fi
  if [[ -n "$logfile" && -r "$logfile" ]]; then
    printf '%s   last lines of %s:\n' "$prefix" "$logfile" >&2
    tail -n 15 "$logfile" | sed "s/^/$prefix     /" >&2
    printf '%s   full log: %s\n' "$prefix" "$logfile" >&2
  fi
}

# run_step PREFIX STEP LOGFILE CMD...: runs CMD, its output shown and kept in LOGFILE (with
# STEP_QUIET=1 only kept); on failure reports the step and exits with CMD's status.
run_step() {
  local prefix=$1 step=$2 logfile=$3; shift 3
  mkdir -p "$(dirname "$logfile")"
  local rc
  set +e
  if [[ "${STEP_QUIET:-0}" == 1 ]]; then
    "$@" > "$logfile" 2>&1; rc=$?
  else
    "$@" 2>&1 | tee "$logfile"; rc=${PIPESTATUS[0]}
  fi
  set -e
  if ((rc != 0)); then
    report_failure "$prefix" "$step failed (exit status $rc)" "$logfile"
    exit "$rc"
  fi
}
