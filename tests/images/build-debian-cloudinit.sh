#!/usr/bin/env bash
# Builds a small Debian bookworm cloud image with the distribution's cloud-init, the kind of image
# a user uploads to an OpenStack cloud: it boots by firmware (SeaBIOS -> MBR -> SYSLINUX) from its
# own disk, DHCPs its first NIC with systemd-networkd, and takes hostname, SSH keys and user data
# from a config drive (ConfigDrive) or the metadata service (OpenStack).
#
#   tests/images/build-debian-cloudinit.sh OUT_DIR
#
# Prints the image's path on stdout (everything else goes to stderr) and makes
# OUT_DIR/debian-cloudinit.qcow2 a symlink to it. The image is cached under a name keyed by a hash
# of this script, so a second run costs nothing; editing the script builds a new one (and removes
# the older image). Downloaded packages are kept in OUT_DIR/debian-cloudinit-cache/ across script
# versions. A killed build leaves no half image (temp file + rename). Needs root, debootstrap,
# apt-get, dpkg-deb, mkfs.ext4 (e2fsprogs >= 1.43, for -d) and qemu-img; no loop devices
# and no mounts beyond the ones debootstrap makes itself.
#
# Disk layout (MBR): p1 FAT16, active, SYSLINUX + kernel + initramfs (installed with mtools, no
# mount); p2 ext4 root filled with `mkfs.ext4 -d`, last so cloud-init's growpart can grow it.
# The root file system does not mount p1: kernel upgrades inside a guest do not reach the boot
# loader (this is a test image).
#
# Environment: DEBIAN_MIRROR (default: the Debian mirror in /etc/apt/sources.list*),
# DEBIAN_SECURITY_MIRROR, ONESTACK_BUILD_TMP (scratch dir; default /dev/shm when it has room),
# DISK_MIB (virtual disk size, default 1024 so it fits a 1 GB flavor).
set -euo pipefail

OUT_DIR=${1:?usage: $0 OUT_DIR}
SELF=$(readlink -f "$0")
DISK_MIB=${DISK_MIB:-1024}
KEY=$({ cat "$SELF"; echo "DISK_MIB=$DISK_MIB"; } | sha256sum | cut -c1-16)
NAME=debian-cloudinit
mkdir -p "$OUT_DIR"
OUT_DIR=$(readlink -f "$OUT_DIR")
IMAGE="$OUT_DIR/$NAME-$KEY.qcow2"
LINK="$OUT_DIR/$NAME.qcow2"

log() { printf '%s\n' "$*" >&2; }

publish_link() {
  ln -sfn "$(basename "$IMAGE")" "$LINK.tmp.$$"
  mv -Tf "$LINK.tmp.$$" "$LINK"
}

if [ -s "$IMAGE" ]; then
  [ "$(readlink "$LINK" 2>/dev/null)" = "$(basename "$IMAGE")" ] || publish_link
  echo "$IMAGE"
  exit 0
fi

# One build at a time per OUT_DIR; a second caller waits and then finds the image.
exec 9>"$OUT_DIR/.$NAME.lock"
flock 9
if [ -s "$IMAGE" ]; then
  publish_link
  echo "$IMAGE"
  exit 0
fi

[ "$(id -u)" = 0 ] || { log "error: must run as root (debootstrap, chroot)"; exit 1; }
for t in debootstrap apt-get dpkg-deb mkfs.ext4 qemu-img chroot; do
  command -v "$t" >/dev/null || { log "error: $t not found"; exit 1; }
done

SUITE=bookworm
# Fixed inputs for a reproducible-ish result: time stamps, file system UUIDs, FAT volume id.
export SOURCE_DATE_EPOCH=1735689600 # 2025-01-01T00:00:00Z
ROOT_UUID=6f6e6573-7461-636b-2d72-6f6f74667331
FAT_ID=4f4e4553
BOOT_MIB=48
export LC_ALL=C TZ=UTC DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true

# The mirror this machine's apt uses (deb822 "URIs:" or one-line "deb URL suite ...").
mirror_from_apt() {
  local want=$1
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null || true; } | awk -v want="$want" '
      /^[[:space:]]*#/ { next }
      /^URIs:/ { for (i = 2; i <= NF; i++) print $i }
      /^deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
    | grep -E "/${want}/?\$" | head -1 | sed 's:/*$::' || true
}
MIRROR=${DEBIAN_MIRROR:-$(mirror_from_apt debian)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(mirror_from_apt debian-security)}
SECURITY=${SECURITY:-${MIRROR}-security}

CACHE="$OUT_DIR/$NAME-cache"
mkdir -p "$CACHE/debootstrap" "$CACHE/apt" "$CACHE/tools"

if [ -z "${ONESTACK_BUILD_TMP:-}" ]; then
  ONESTACK_BUILD_TMP=$OUT_DIR
  if [ -d /dev/shm ] && [ -w /dev/shm ] \
      && [ "$(df -Pm /dev/shm | awk 'NR==2 {print $4}')" -gt $((DISK_MIB + 2048)) ]; then
    ONESTACK_BUILD_TMP=/dev/shm # tmpfs: dpkg's fsyncs cost nothing
  fi
fi
remove_tree() {
  local m
  # Anything left mounted inside the chroot (debootstrap's /proc, /sys on a killed build) first.
  for m in $(awk -v w="$1/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$1"
}
# Scratch trees of builds that were killed (-9) hold RAM on tmpfs: remove those whose pid is gone.
for stale in "$ONESTACK_BUILD_TMP/$NAME-build."*; do
  if [ -d "$stale" ] && ! kill -0 "${stale##*.}" 2>/dev/null; then remove_tree "$stale"; fi
done
rm -f "$OUT_DIR/$NAME"-*.qcow2.partial.*
WORK="$ONESTACK_BUILD_TMP/$NAME-build.$$"
remove_tree "$WORK"
mkdir -p "$WORK"
ROOT="$WORK/root"
cleanup() {
  remove_tree "$WORK"
  rm -f "$IMAGE.partial.$$"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

T0=$(date +%s.%N)
TS=$T0
TIMES=""
step_done() {
  local now
  now=$(date +%s.%N)
  TIMES+=$(awk -v a="$TS" -v b="$now" -v s="$1" 'BEGIN {printf "  %-40s %6.1fs", s, b - a}')$'\n'
  log "$(awk -v a="$T0" -v b="$now" -v s="$1" 'BEGIN {printf "[%6.1fs] %s", b - a, s}')"
  TS=$now
}
log "building $IMAGE (mirror $MIRROR, scratch $WORK)"

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
  DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
  SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "$@"; }

# --- Host tools for the boot partition, unpacked from Debian packages (nothing installed) -------
TOOLS="$WORK/tools"
mkdir -p "$TOOLS"
(
  cd "$CACHE/tools"
  ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || apt-get update -qq
  want=(syslinux syslinux-common mtools dosfstools)
  missing=()
  for p in "${want[@]}"; do
    v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
    have=
    for d in "${p}"_*.deb; do
      [ -e "$d" ] && [ "$(dpkg-deb -f "$d" Version)" = "$v" ] && have=1
    done
    if [ -z "$have" ]; then
      rm -f "${p}"_*.deb
      missing+=("$p")
    fi
  done
  [ ${#missing[@]} -eq 0 ] || apt-get download -qq -o APT::Sandbox::User=root "${missing[@]}" >&2
)
for d in "$CACHE"/tools/*.deb; do dpkg-deb -x "$d" "$TOOLS"; done
step_done "boot loader tools"

# --- Base system ------------------------------------------------------------------------------
# dpkg leaves out documentation and translations from the start.
mkdir -p "$ROOT/etc/dpkg/dpkg.cfg.d"
cat > "$ROOT/etc/dpkg/dpkg.cfg.d/01-onestack-small" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/groff/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/linda/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" \
  --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
  "$SUITE" "$ROOT" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
  || { tail -30 "$WORK/debootstrap.log" >&2; log "error: debootstrap failed"; exit 1; }
step_done "debootstrap minbase"

# --- Packages ---------------------------------------------------------------------------------
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
  > "$ROOT/etc/apt/apt.conf.d/01-onestack-norecommends"
printf 'force-unsafe-io\n' > "$ROOT/etc/dpkg/dpkg.cfg.d/02-onestack-build-only"
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d" # start no services in the chroot
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
# The initramfs: only what finds a root disk on virtio, SCSI, IDE/SATA or NVMe, and a CD-ROM:
# cloud-init's ds-identify looks for the config-2 drive when systemd starts, right after the
# initramfs, so the drive must exist by then. No resume.
mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=zstd\n' > "$ROOT/etc/initramfs-tools/conf.d/onestack"
printf 'RESUME=none\n' > "$ROOT/etc/initramfs-tools/conf.d/resume"
printf '%s\n' virtio_pci virtio_blk virtio_scsi sd_mod sr_mod ata_piix ata_generic ahci nvme \
  ext4 crc32c_generic >> "$ROOT/etc/initramfs-tools/modules"
# The kernel package's hooks must not try to find a boot loader in the chroot.
printf 'do_symlinks = no\n' > "$ROOT/etc/kernel-img.conf"

cp -a "$CACHE/apt/." "$ROOT/var/cache/apt/archives/" 2>/dev/null || true
in_root apt-get update -qq >&2
step_done "apt-get update"
PACKAGES=(
  linux-image-cloud-amd64 initramfs-tools zstd
  systemd-sysv udev dbus systemd-resolved iproute2 netbase
  cloud-init cloud-guest-utils sudo
  openssh-server
)
in_root apt-get install -y -qq -o Dpkg::Use-Pty=0 "${PACKAGES[@]}" > "$WORK/apt.log" 2>&1 \
  || { tail -40 "$WORK/apt.log" >&2; log "error: apt-get install failed"; exit 1; }
# Keep the downloaded packages for the next build (and only those this build used).
rm -f "$CACHE"/apt/*.deb
cp -a "$ROOT"/var/cache/apt/archives/*.deb "$CACHE/apt/" 2>/dev/null || true
step_done "apt-get install (${#PACKAGES[@]} packages + deps)"

# --- Configuration ----------------------------------------------------------------------------
KVER=$(ls "$ROOT/lib/modules" | sort -V | tail -1)
echo debian > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
printf 'UUID=%s / ext4 defaults,errors=remount-ro 0 1\n' "$ROOT_UUID" > "$ROOT/etc/fstab"

# Networking: systemd-networkd. cloud-init writes 10-cloud-init-*.network from the datasource's
# network data; without a datasource this fallback DHCPs the Ethernet NIC(s).
mkdir -p "$ROOT/etc/systemd/network"
cat > "$ROOT/etc/systemd/network/99-onestack-dhcp.network" <<'EOF'
[Match]
Type=ether
Kind=!*

[Network]
DHCP=yes
EOF
in_root systemctl enable -q systemd-networkd.service systemd-resolved.service
mkdir -p "$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat > "$ROOT/etc/systemd/system/systemd-networkd-wait-online.service.d/onestack.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60
EOF

# Boot time under emulation: no periodic maintenance jobs in a short-lived instance.
for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer; do
  in_root systemctl mask -q "$u" 2>/dev/null || true
done

# cloud-init: config drive first, then the metadata service; only the modules a cloud instance
# needs (no locale generation, no package mirrors, no RSA host key: slow under emulation).
cat > "$ROOT/etc/cloud/cloud.cfg.d/90-onestack.cfg" <<'EOF'
datasource_list: [ ConfigDrive, OpenStack ]
datasource:
  OpenStack:
    max_wait: 30
    timeout: 5
    retries: 2
system_info:
  network:
    renderers: [ networkd ]
    activators: [ networkd ]
ssh_genkeytypes: [ ed25519, ecdsa ]
ssh_deletekeys: true
ssh_pwauth: false
cloud_init_modules:
  - seed_random
  - bootcmd
  - write-files
  - growpart
  - resizefs
  - disk_setup
  - mounts
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - users-groups
  - ssh
cloud_config_modules:
  - set-passwords
  - timezone
  - runcmd
cloud_final_modules:
  - package-update-upgrade-install
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - ssh-authkey-fingerprints
  - keys-to-console
  - final-message
  - power-state-change
EOF

# Key logins only; set here so cloud-init's set-passwords finds nothing to change and does not
# restart sshd during boot.
sed -i 's/^#\?PasswordAuthentication .*/PasswordAuthentication no/' "$ROOT/etc/ssh/sshd_config"
grep -q '^PasswordAuthentication no' "$ROOT/etc/ssh/sshd_config"

# SSH host keys: cloud-init makes them (ssh module, before ssh.service); when no datasource is
# found ds-identify leaves cloud-init off, and this makes one ed25519 key instead.
cat > "$ROOT/etc/systemd/system/onestack-ssh-hostkey.service" <<'EOF'
[Unit]
Description=SSH host key when cloud-init made none
After=cloud-init.service
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'

[Install]
WantedBy=ssh.service
EOF
in_root systemctl enable -q onestack-ssh-hostkey.service

# Kernel command line and boot loader.
CMDLINE="root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8"
step_done "configure"

# --- Tidy: what a fresh instance must create itself, and what an image need not carry ------------
rm -f "$ROOT/usr/sbin/policy-rc.d" "$ROOT/etc/dpkg/dpkg.cfg.d/02-onestack-build-only" \
  "$ROOT/etc/apt/apt.conf.d/01-onestack-norecommends"
in_root apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
  "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/lintian \
  "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old \
  "$ROOT"/var/log/* "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/root/.bash_history \
  "$ROOT"/etc/ssh/ssh_host_* "$ROOT"/var/lib/cloud/* "$ROOT"/var/lib/systemd/random-seed \
  "$ROOT"/var/cache/ldconfig/aux-cache
find "$ROOT/usr/share/doc" -xdev ! -type d ! -name copyright -delete
find "$ROOT/usr/share/locale" -xdev -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find "$ROOT/usr/share/doc" -xdev -depth -mindepth 1 -type d -empty -delete
: > "$ROOT/etc/machine-id" # systemd makes one on first boot
rm -f "$ROOT/var/lib/dbus/machine-id"
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"
rm -f "$ROOT"/boot/vmlinuz-* "$ROOT"/boot/initrd.img-* # they live on p1
# Reproducible-ish: no time stamp after SOURCE_DATE_EPOCH, except Python sources: their .pyc
# (compiled by the packages' postinst) record the source's mtime, and a changed one makes the
# guest recompile at boot (slow under emulation). Packaged files keep their packaged mtimes.
find "$ROOT" -xdev -newermt "@$SOURCE_DATE_EPOCH" ! -name '*.py' \
  -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} + 2>/dev/null || true
ROOT_MIB=$(du -smx "$ROOT" | cut -f1)
step_done "tidy (root tree ${ROOT_MIB} MiB)"

# --- Disk -------------------------------------------------------------------------------------
PART2_MIB=$((DISK_MIB - 1 - BOOT_MIB))
[ "$PART2_MIB" -gt $((ROOT_MIB * 5 / 4 + 64)) ] \
  || { log "error: DISK_MIB=$DISK_MIB too small for a ${ROOT_MIB} MiB root"; exit 1; }
# p2: ext4 straight from the tree (no mount). Fixed UUID, hash seed and time.
truncate -s "${PART2_MIB}M" "$WORK/root.ext4"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L debian-root -U "$ROOT_UUID" \
  -E "hash_seed=$ROOT_UUID,lazy_itable_init=1,root_owner=0:0" -d "$ROOT" "$WORK/root.ext4"
step_done "mkfs.ext4 -d"

# p1: FAT16 with SYSLINUX, the kernel and the initramfs (mtools, no mount).
TOOLENV=(env PATH="$TOOLS/sbin:$TOOLS/usr/sbin:$TOOLS/usr/bin:$PATH" MTOOLS_SKIP_CHECK=1)
truncate -s "${BOOT_MIB}M" "$WORK/boot.fat"
"${TOOLENV[@]}" mkfs.fat -F 16 -n BOOT -i "$FAT_ID" --invariant -h 2048 "$WORK/boot.fat" >/dev/null
cat > "$WORK/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $CMDLINE
EOF
cp "$TOOLS/usr/lib/syslinux/modules/bios/ldlinux.c32" "$WORK/ldlinux.c32"
for f in vmlinuz initrd.img syslinux.cfg ldlinux.c32; do
  touch -d "@$SOURCE_DATE_EPOCH" "$WORK/$f"
  "${TOOLENV[@]}" mcopy -m -o -i "$WORK/boot.fat" "$WORK/$f" "::/$f"
done
"${TOOLENV[@]}" syslinux --install "$WORK/boot.fat"

le32() { printf '%b' "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) \
  $(($1 >> 16 & 255)) $(($1 >> 24 & 255)))"; }
# One MBR partition entry: status, CHS "use LBA" (fe ff ff), type, CHS again, LBA start, sectors.
mbr_entry() { printf '%b' "\\x$1\\xfe\\xff\\xff\\x$2\\xfe\\xff\\xff"; le32 "$3"; le32 "$4"; }
# The disk: MBR boot code, p1 active FAT16 (LBA) at 1 MiB, p2 Linux after it.
DISK="$WORK/disk.raw"
truncate -s "${DISK_MIB}M" "$DISK"
dd if="$TOOLS/usr/lib/syslinux/mbr/mbr.bin" of="$DISK" bs=440 count=1 conv=notrunc status=none
{
  le32 "$((16#$FAT_ID))"; printf '\0\0'                                   # disk id
  mbr_entry 80 0e 2048 $((BOOT_MIB * 2048))                               # p1 FAT16 LBA, active
  mbr_entry 00 83 $(((1 + BOOT_MIB) * 2048)) $(((DISK_MIB - 1 - BOOT_MIB) * 2048)) # p2 Linux
  head -c 32 /dev/zero                                                    # p3, p4 unused
  printf '\x55\xaa'
} | dd of="$DISK" bs=1 seek=440 conv=notrunc status=none
dd if="$WORK/boot.fat" of="$DISK" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$WORK/root.ext4" of="$DISK" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc,sparse status=none
step_done "boot partition + disk assembly"

qemu-img convert -q -c -f raw -O qcow2 "$DISK" "$IMAGE.partial.$$"
step_done "qemu-img convert -c"

# Record what went in, publish atomically, drop images of older script versions.
in_root dpkg-query -W -f '${Package} ${Version}\n' > "$OUT_DIR/$NAME-$KEY.manifest.tmp"
mv -f "$OUT_DIR/$NAME-$KEY.manifest.tmp" "$OUT_DIR/$NAME-$KEY.manifest"
mv -f "$IMAGE.partial.$$" "$IMAGE"
publish_link
for old in "$OUT_DIR/$NAME"-*.qcow2 "$OUT_DIR/$NAME"-*.manifest; do
  case "$old" in "$IMAGE" | "$OUT_DIR/$NAME-$KEY.manifest") ;; *) rm -f "$old" ;; esac
done
SIZE=$(stat -c %s "$IMAGE")
log "time per step:"
log "${TIMES%$'\n'}"
log "$(awk -v a="$T0" -v b="$(date +%s.%N)" -v i="$IMAGE" -v s="$SIZE" -v d="$DISK_MIB" \
  -v k="$KVER" 'BEGIN {printf "built %s: %.1f MiB compressed qcow2, %d MiB virtual, " \
  "kernel %s, total %.0fs", i, s / 1048576, d, k, b - a}')"
echo "$IMAGE"
