# ptxas -v output -> one line per kernel and arch; exit 1 if any spill store or load
/Compiling entry function/ {
  s = $0; sub(/.*entry function '/, "", s); fn = s; sub(/'.*/, "", fn)
  arch = s; sub(/.*for '/, "", arch); sub(/'.*/, "", arch)
}
/bytes spill stores/ {
  s = $0; sub(/ bytes spill stores.*/, "", s); sub(/.* /, "", s); st = s + 0
  s = $0; sub(/ bytes spill loads.*/, "", s); sub(/.* /, "", s); ld = s + 0
}
/Used [0-9]+ registers/ {
  s = $0; sub(/.*Used /, "", s); sub(/ registers.*/, "", s); r = s
  sm = 0; if ($0 ~ /bytes smem/) { s = $0; sub(/ bytes smem.*/, "", s); sub(/.* /, "", s); sm = s }
  name = fn; if (length(name) > 70) name = "..." substr(name, length(name) - 66)
  printf "      %-7s %3d regs  spill %d/%d B  smem %6d B  %s\n", arch, r, st, ld, sm, name
  if (st > 0 || ld > 0) bad = 1
}
END { exit (bad ? 1 : 0) }
