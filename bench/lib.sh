# Shared by the benchmark scripts: source it after setting $w (the work directory).

# clean DIR: remove a tree, clearing the immutable flag ostree sets on deployment roots first.
clean() {
  find "$1" -maxdepth 8 -path '*/ostree/deploy/*/deploy/*' -type d -exec chattr -i {} + 2>/dev/null || true
  rm -rf "$1"
}

# seconds COMMAND...: run quietly (output in $w/last.*), print the wall time; stop on failure.
seconds() {
  local s e
  s=$(date +%s.%N)
  "$@" >"$w/last.out" 2>"$w/last.err" || { cat "$w/last.err" >&2; exit 1; }
  e=$(date +%s.%N)
  python3 -c "print(f'{$e - $s:.2f}')"
}
