# Port choice shared by scripts/stack and scripts/jobs (sourced).
#
# Ports are never taken from the kernel's ephemeral range (ip_local_port_range): any outgoing
# connection may hold one of those as its source port at any time, and a server could then not
# bind it. They are chosen below that range (or above it, where there is no room below).
read -r EPHEMERAL_LOW EPHEMERAL_HIGH < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null \
  || { EPHEMERAL_LOW=32768; EPHEMERAL_HIGH=60999; }

# Prints "LOW HIGH", the range ports are chosen from; fails when the ephemeral range covers all.
port_range() {
  if ((EPHEMERAL_LOW - 15000 > 1000)); then echo "15000 $((EPHEMERAL_LOW - 1))"
  elif ((EPHEMERAL_LOW - 2000 > 1000)); then echo "2000 $((EPHEMERAL_LOW - 1))"
  elif ((65535 - EPHEMERAL_HIGH >= 1000)); then echo "$((EPHEMERAL_HIGH + 1)) 65535"
  else return 1
  fi
}
# Any TCP socket bound to the port, listening or connected, keeps a server from binding it.
# TIME-WAIT leftovers do not count: servers bind with SO_REUSEADDR.
port_in_use() { ss -tanH exclude time-wait "( sport = :$1 )" 2>/dev/null | grep -q .; }
port_listening() { ss -ltnH "( sport = :$1 )" 2>/dev/null | grep -q .; }
# "STATE LOCAL -> PEER users:((...))" of a socket bound to the port, for messages.
port_holder() {
  local who
  who=$(ss -tanpH exclude time-wait "( sport = :$1 )" 2>/dev/null | head -n 1 | awk '{print $1, $4, "->", $5, $6}')
  echo "${who:-unknown}"
}
# free_port [EXCLUDED...]: prints a port of port_range that no socket holds and that is not among
# EXCLUDED; fails when none is found.
free_port() {
  local low high p excluded=" $* "
  read -r low high < <(port_range) || return 1
  for _ in $(seq 1 500); do
    p=$((low + (RANDOM * 32768 + RANDOM) % (high - low + 1)))
    if ! port_in_use "$p" && [[ "$excluded" != *" $p "* ]]; then echo "$p"; return 0; fi
  done
  return 1
}
