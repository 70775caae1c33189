#!/usr/bin/env bash
# Install the MicroPython unix port into the project's cache (.cache/micropython) and print the
# path of a runnable `micropython`.
#
# Resolution order: $MICROPYTHON; `micropython` on PATH; the cache; otherwise fetch Debian 13's
# `micropython` package and the libraries it needs with apt-get download into a private apt state,
# unpack them with dpkg -x and run the interpreter through the unpacked ld-linux. The mirror comes
# from this machine's own apt sources, so no registry host is written here.
#
#   tools/get_micropython.sh --32bit   # Debian's i386 build instead, in .cache/micropython-i386
#
# The 32-bit build is the same unix port with the boards' word size (ESP32 and RP2 are 32-bit):
# 4-byte pointers and 16-byte GC blocks, so heap figures measured on it are the boards' own. It
# needs an x86-64 kernel that runs i386 programs; $MICROPYTHON32 names one built elsewhere.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
suite="${MPOTA_MP_SUITE:-trixie}"
pkgs="micropython libc6 libffi8 libmbedcrypto16 libmbedtls21 libmbedx509-7"

if [ "${1:-}" = "--32bit" ]; then
  if [ -n "${MICROPYTHON32:-}" ]; then echo "$MICROPYTHON32"; exit 0; fi
  [ "$(uname -m)" = "x86_64" ] || { echo "get_micropython: --32bit needs an x86-64 host (i386 build); set MICROPYTHON32" >&2; exit 1; }
  cache="$top/.cache/micropython-i386"
  arch_opts=(-o "APT::Architecture=i386" -o "APT::Architectures::=i386")
  pkgs=$(for p in $pkgs; do printf '%s:i386 ' "$p"; done)
elif [ -n "${1:-}" ]; then
  echo "get_micropython: unknown option ${1} (the only one is --32bit)" >&2; exit 2
else
  cache="$top/.cache/micropython"
  arch_opts=()
  if [ -n "${MICROPYTHON:-}" ]; then echo "$MICROPYTHON"; exit 0; fi
  if command -v micropython >/dev/null 2>&1; then command -v micropython; exit 0; fi
fi
wrapper="$cache/bin/micropython"
if [ -x "$wrapper" ] && "$wrapper" -c 'pass' >/dev/null 2>&1; then echo "$wrapper"; exit 0; fi

command -v apt-get >/dev/null || { echo "get_micropython: no apt-get here; set MICROPYTHON to a MicroPython unix port" >&2; exit 1; }

mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  mirror=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {if ($i !~ /security/) {print $i; exit}}}' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || { echo "get_micropython: no Debian mirror found in /etc/apt sources; set MICROPYTHON" >&2; exit 1; }

work="$cache/apt"
rm -rf "$work" "$cache/root"
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/debs" "$cache/root" "$cache/bin"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$work/sources.list"
apt_opts=(-o "Dir::State=$work" -o "Dir::State::Lists=$work/lists" -o "Dir::State::status=/dev/null"
  -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::Cache=$work"
  -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1" ${arch_opts[@]+"${arch_opts[@]}"})
echo "get_micropython: fetching MicroPython from Debian $suite" >&2
apt-get "${apt_opts[@]}" -qq update >&2
(cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download $pkgs >&2)
for deb in "$work/debs"/*.deb; do dpkg -x "$deb" "$cache/root"; done
rm -rf "$work"

libdir=$(find "$cache/root/usr/lib" -mindepth 1 -maxdepth 1 -type d -name '*-linux-gnu' | head -n 1)
[ -n "$libdir" ] || libdir=$(dirname "$(find "$cache/root" -name 'ld-linux*.so*' | head -n 1)")
ld=$(find "$libdir" -maxdepth 1 -name 'ld-linux*.so*' | head -n 1)
[ -n "$ld" ] || ld=$(find "$cache/root" -name 'ld-linux*.so*' | head -n 1)
cat >"$wrapper" <<WRAP
#!/bin/sh
exec "$ld" --library-path "$libdir" "$cache/root/usr/bin/micropython" "\$@"
WRAP
chmod +x "$wrapper"
"$wrapper" -c 'import sys; print("get_micropython: MicroPython", sys.version)' >&2
echo "$wrapper"
