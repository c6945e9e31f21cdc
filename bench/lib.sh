# Shared by the benchmark scripts: source it from the repository's top directory, then call
# `setup DEFAULT_WORKDIR "$@"`.

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

# setup DEFAULT_WORKDIR [WORKDIR]: the project's tools and those ../shared/peer/by-hand.sh needs
# beyond them (GRUB's BIOS images, sfdisk), cairn built ($bin; cargo honours CARGO_TARGET_DIR,
# CAIRN_BIN overrides the binary outright), and an empty work directory $w (WORKDIR, or the
# default).
setup() {
  bash .ci/deps
  command -v grub-mkimage >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q grub-pc-bin >/dev/null
  command -v sfdisk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q fdisk >/dev/null
  cargo build --release -q
  bin=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/cairn}
  w=${2:-$1}
  clean "$w"
  mkdir -p "$w"
  unset SOURCE_DATE_EPOCH
}
