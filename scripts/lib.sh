# Helpers the bench scripts share; sourced (`. scripts/lib.sh`) after they
# cd to the repository root. CPU figures are in seconds (the kernel's clock
# ticks divided by its tick rate), never raw ticks.

# A free loopback TCP port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until something accepts on 127.0.0.1:PORT, trying every 0.1 s,
# TRIES times (default 100: 10 s).
wait_port() { # port [tries]
  for _ in $(seq 1 "${2:-100}"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing on port $1" >&2
  return 1
}

# User + system CPU seconds a process has used so far (fields 14 and 15 of
# /proc/PID/stat, counted after the parenthesised name, which may hold spaces).
cpu_seconds() { # pid
  sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$(getconf CLK_TCK)" '{print ($12 + $13) / hz}'
}

# Resident memory of a process, in KiB.
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
