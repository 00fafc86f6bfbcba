#!/bin/sh
# Builds the emulated board's image from Debian's packages, laid out as a Buildroot BusyBox image:
#   tests/board/mkimage.sh ARCH AGENT OUT      (ARCH: armhf or arm64; AGENT: the static agent)
# OUT/vmlinuz     Debian's kernel for the board (linux-image-armmp or linux-image-arm64)
# OUT/rootfs.cpio.gz  the root file system as an initramfs: busybox-static (init, syslogd, ifup),
#                 dropbear-bin with its libraries, the kernel's virtio network and RNG modules,
#                 the agent with the Buildroot package's init script and example configuration,
#                 /var/run -> /run, a `device` user; the test appends its own configuration.
# The packages are downloaded once into OUT/debs (apt-get download: the archive only).
set -eu

arch=$1
agent=$2
out=$3
here=$(cd "$(dirname "$0")" && pwd)
pkg="$here/../../buildroot/package/tunnel-agent"

case "$arch" in
	armhf) kernel_pkg=linux-image-armmp qemu_user=qemu-arm ;;
	arm64) kernel_pkg=linux-image-arm64 qemu_user=qemu-aarch64 ;;
	*) echo "mkimage.sh: ARCH is armhf or arm64, not $arch" >&2; exit 2 ;;
esac

mkdir -p "$out/debs"
if [ ! -e "$out/debs/.complete" ]; then
	kernel=$(apt-cache depends "$kernel_pkg:$arch" | sed -n 's/^ *Depends: \(linux-image-[^:]*\).*/\1/p' | head -n 1)
	[ -n "$kernel" ] || { echo "mkimage.sh: no $kernel_pkg:$arch in the apt lists (dpkg --add-architecture $arch; apt-get update)" >&2; exit 1; }
	# apt-get download as root writes as _apt where it can: the folder is made writable for it.
	chmod 0777 "$out/debs"
	if ! (cd "$out/debs" && apt-get download -q "$kernel:$arch" "busybox-static:$arch" \
		"dropbear-bin:$arch" "libc6:$arch" "libcrypt1:$arch" "libtomcrypt1:$arch" \
		"libtommath1:$arch" "libgmp10:$arch" "zlib1g:$arch") >"$out/download.log" 2>&1; then
		cat "$out/download.log" >&2
		exit 1
	fi
	touch "$out/debs/.complete"
fi

root="$out/root"
rm -rf "$root" "$out/kernel"
mkdir -p "$root" "$out/kernel"
for deb in "$out"/debs/*.deb; do
	case "$deb" in
		*/linux-image-*) dpkg-deb -x "$deb" "$out/kernel" ;;
		*) dpkg-deb -x "$deb" "$root" ;;
	esac
done
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian" "$root/usr/share/locale" \
	"$root/usr/share/i18n" "$root"/usr/lib/*-linux-gnu*/gconv

# BusyBox and its applets, as Buildroot installs them (the list asked of the board's own busybox).
for applet in $("$qemu_user" "$root/bin/busybox" --list-full); do
	[ -e "$root/$applet" ] || { mkdir -p "$root/$(dirname "$applet")"; ln -s /bin/busybox "$root/$applet"; }
done

# The kernel and the modules the board needs, loaded in dependency order by S05modules.
cp "$out"/kernel/boot/vmlinuz-* "$out/vmlinuz"
kver=$(ls "$out/kernel/lib/modules")
mods="$out/kernel/lib/modules/$kver"
# The package's modules.dep is made at install: depmod (kmod) reads the board's modules too.
depmod -b "$out/kernel" "$kver"
order=""
add() { # add MODULE_PATH: its dependencies first (modules.dep), then itself
	case " $order " in *" $1 "*) return ;; esac
	# shellcheck disable=SC2013 # modules.dep lists a module's dependencies as words
	for dep in $(sed -n "s|^$1: *||p" "$mods/modules.dep"); do add "$dep"; done
	order="$order $1"
}
for m in drivers/net/virtio_net.ko drivers/virtio/virtio_mmio.ko drivers/char/hw_random/virtio-rng.ko; do
	add "kernel/$m"
done
: >"$root/etc/modules.order"
for m in $order; do
	mkdir -p "$root/lib/modules/$kver/$(dirname "$m")"
	cp "$mods/$m" "$root/lib/modules/$kver/$m"
	echo "$m" >>"$root/etc/modules.order"
done

# Buildroot's layout and the board's own files.
cp -a "$here/rootfs/." "$root/"
mkdir -p "$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$root/run" "$root/root" "$root/var/log" \
	"$root/etc/network/if-pre-up.d" "$root/etc/network/if-up.d" "$root/etc/network/if-down.d" \
	"$root/etc/network/if-post-down.d" "$root/home/device"
ln -sfn /run "$root/var/run"
ln -sfn /proc/self/mounts "$root/etc/mtab"
mknod -m 0600 "$root/dev/console" c 5 1
chmod 0640 "$root/etc/shadow"
chmod 0700 "$root/root"
chmod 0755 "$root/init" "$root"/etc/init.d/*
chown 1000:1000 "$root/home/device"

# The package, as Buildroot's tunnel-agent.mk installs it.
install -D -m 0755 "$agent" "$root/usr/bin/tunnel-agent"
install -D -m 0755 "$pkg/S95tunnel-agent" "$root/etc/init.d/S95tunnel-agent"
install -D -m 0600 "$pkg/config.json.example" "$root/etc/tunnel-agent/config.json.example"

(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -1 >"$out/rootfs.cpio.gz"
echo "mkimage.sh: $out/vmlinuz $out/rootfs.cpio.gz (kernel $kver, $(du -sh "$root" | cut -f1) root)"
